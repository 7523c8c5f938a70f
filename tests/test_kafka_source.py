"""ReadFromKafka against the real local broker, on DirectRunner and Prism: backfill, streaming, idleness,
new partitions, start positions."""
import collections
import datetime as dt
import time
from collections import Counter

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.timestamp import Timestamp

from pipelines.generate import GeneratorConfig, generate
from pipelines.generate.sinks import produce
from pipelines.kafka_topics import ensure_topics
from pipelines.runners import runner_args
from transforms.json_lines import AppendJsonLines, read_json_lines
from transforms import codec
from transforms.decode_events import DEAD_LETTERS, DecodeEvents, EventDecoder
from transforms.kafka_source import ReadFromKafka, StartAt, resolve_launch

pytestmark = pytest.mark.integration
TOPICS = ("social_interactions", "web_sessions", "orders")
RUNNERS = ("DirectRunner", "PrismRunner")


def _record_line(record):
    return {"event_id": record["event_id"]}


def _dead_line(dead):
    return {"topic": dead.topic, "partition": dead.partition, "offset": dead.offset, "stage": dead.stage,
            "reason": dead.reason, "raw_len": len(dead.value or b""), "kafka_ts": dead.kafka_timestamp_ms}


@pytest.mark.parametrize("runner,whole_partitions", [(r, False) for r in RUNNERS] + [("FnApiRunner", True)],
                         ids=[*RUNNERS, "FnApiRunner-whole-partitions"])
def test_backfill_reads_each_record_once_and_dead_letters_the_malformed(kafka, topic_prefix, tmp_path, runner,
                                                                        whole_partitions):
    records = generate(GeneratorConfig(customers=250, days=20, seed=31), b"k", fmt="mixed", malformed=0.03,
                       late=0.02, out_of_order=0.05, duplicates=0.02)
    ensure_topics(kafka, prefix=topic_prefix, partitions=3)
    produce(records, kafka, topic_prefix=topic_prefix)
    decoder = EventDecoder.for_prefix(topic_prefix)

    with beam.Pipeline(options=PipelineOptions(runner_args(runner))) as pipeline:
        messages = pipeline | ReadFromKafka(kafka, [topic_prefix + t for t in TOPICS], bounded=True,
                                            event_time=decoder, group_id=f"{topic_prefix}backfill",
                                            whole_partitions=whole_partitions)
        assert messages.is_bounded
        outputs = messages | DecodeEvents(decoder)
        for topic in TOPICS:
            _ = outputs[topic] | f"Write{topic}" >> beam.Map(_record_line) | f"Append{topic}" >> beam.ParDo(AppendJsonLines(str(tmp_path / f"{topic}.jsonl")))
        _ = outputs[DEAD_LETTERS] | "WriteDead" >> beam.Map(_dead_line) | "AppendDead" >> beam.ParDo(AppendJsonLines(str(tmp_path / "dead.jsonl")))

    for topic in TOPICS:
        landed = [row["event_id"] for row in read_json_lines(tmp_path / f"{topic}.jsonl")]
        expected = [r.event["event_id"] for r in records if r.topic == topic and r.event is not None]
        assert Counter(landed) == Counter(expected), topic  # every event exactly once
    dead = read_json_lines(tmp_path / "dead.jsonl")
    malformed = [r for r in records if r.malformed]
    assert Counter(d["topic"] for d in dead) == Counter(topic_prefix + r.topic for r in malformed)
    assert Counter(d["stage"] for d in dead)["validate"] == sum(r.malformed in ("negative_amount", "far_future") for r in malformed)
    duplicates = sum(r.malformed == "duplicate" for r in malformed)
    assert Counter(d["reason"] for d in dead)["duplicate_event"] == duplicates > 0  # each event counted once
    assert all(d["raw_len"] > 0 and d["kafka_ts"] > 0 and d["reason"] for d in dead)
    assert len({(d["topic"], d["partition"], d["offset"]) for d in dead}) == len(dead)
    # Records in = landed + dead-lettered.
    landed_total = sum(len(read_json_lines(tmp_path / f"{t}.jsonl")) for t in TOPICS)
    assert landed_total + len(dead) == len(records)
    # Finalized checkpoints committed the group's offsets (for lag monitoring) up to the end.
    assert _group_lag(kafka, f"{topic_prefix}backfill", [topic_prefix + t for t in TOPICS]) == 0


def _group_lag(connection, group, topics):
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**connection.client_config(), group_id=group, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t)]
        end = consumer.end_offsets(partitions)
        return sum(end[tp] - (consumer.committed(tp) or 0) for tp in partitions)
    finally:
        consumer.close()


def test_start_positions_resolve_to_offsets_at_launch(kafka, topic_prefix):
    from kafka import KafkaProducer

    ensure_topics(kafka, prefix=topic_prefix, partitions=2)
    topic = topic_prefix + "orders"
    producer = KafkaProducer(**kafka.client_config())
    early = int(time.time() * 1000) - 60_000
    for n in range(10):
        producer.send(topic, value=b"x", partition=n % 2, timestamp_ms=early + n * 1000)
    producer.flush()
    producer.close()

    def start(at, **kw):
        offsets, stop, counts = resolve_launch(kafka, (topic,), at, bounded=True, **kw)
        return dict(offsets), dict(stop), counts

    offsets, stop, counts = start(StartAt())
    assert offsets == {(topic, 0): 0, (topic, 1): 0} and stop == {(topic, 0): 5, (topic, 1): 5}
    assert counts == ((topic, 2),)
    assert start(StartAt("latest"))[0] == stop
    assert start(StartAt.at_offsets({(topic, 1): 3}))[0] == {(topic, 0): 0, (topic, 1): 3}
    # Records 6..9 have timestamps from early+6s on: partition 0 holds n=6,8 at offsets 3,4; partition 1 n=7,9 at 3,4.
    assert start(StartAt("timestamp", timestamp_ms=early + 6000))[0] == {(topic, 0): 3, (topic, 1): 3}
    assert start(StartAt.at_time(dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)))[0] == stop
    with pytest.raises(ValueError, match="group id"):
        start(StartAt("committed"))


def test_reader_watermark_holds_at_the_newest_event_then_keeps_the_clocks_pace_when_idle(kafka, topic_prefix,
                                                                                        sample_events, monkeypatch):
    """An idle partition's event time goes on at the wall clock's pace from its newest record: a record an hour old
    leaves it an hour behind the clock (history replayed in parts does not find the watermark at today), and with
    flush_after_idle_s it jumps to the clock."""
    from kafka import KafkaProducer
    from apache_beam.utils.timestamp import Timestamp

    ensure_topics(kafka, prefix=topic_prefix, partitions=2)
    topic = topic_prefix + "orders"
    hour_ago = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(hours=1)
    value, headers = codec.encode("orders", dict(sample_events["orders"], event_time=hour_ago))
    producer = KafkaProducer(**kafka.client_config())
    producer.send(topic, key=b"C1", value=value, headers=headers, partition=0).get(timeout=10)
    producer.close()

    source = ReadFromKafka(kafka, [topic], event_time=EventDecoder.for_prefix(topic_prefix), idle_after_s=3,
                           flush_after_idle_s=8, max_out_of_orderness_s=1).launch_source()
    partition_zero = [s for s in source.split(20) if [tp for tp, _ in s.start_offsets] == [(topic, 0)]][0]
    # Partition 1's split is not read here: it counts as read by another worker at once, never holding this one.
    monkeypatch.setattr("transforms.kafka_source.FRESH_REPORT_S", 0.0)
    reader = partition_zero.create_reader(None, None)
    try:
        got = reader.start()
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            got = reader.advance()
        assert got and reader.get_current().offset == 0
        assert reader.get_current_timestamp() == Timestamp.from_utc_datetime(hour_ago)
        held = Timestamp.from_utc_datetime(hour_ago) - 1
        assert not reader.advance() and reader.get_watermark() == held  # quiet, not yet idle: held back
        quiet = reader.get_checkpoint_mark()
        deadline = time.monotonic() + 3.2
        while time.monotonic() < deadline:  # at its end for idle_after_s, from the first look that saw it there
            assert not reader.advance()
        idle = reader.get_watermark()  # idle: an hour old, plus the seconds it has been quiet
        assert Timestamp.from_utc_datetime(hour_ago) + 1 <= idle < Timestamp.from_utc_datetime(hour_ago) + 10
        mark = reader.get_checkpoint_mark()
        assert dict(mark.next_offsets) == {(topic, 0): 1}
    finally:
        reader.close()
    # Runners rebuild readers from checkpoints between bundles: one rebuilt from the mark just cut keeps its
    # clock, so the partition is still idle, as it would have been for the first reader.
    rebuilt = partition_zero.create_reader(None, mark)
    try:
        assert not rebuilt.start()  # starts after the record it already delivered
        assert idle <= rebuilt.get_watermark() < Timestamp.from_utc_datetime(hour_ago) + 10
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:  # idle past flush_after_idle_s: done up to now
            assert not rebuilt.advance()
        assert rebuilt.get_watermark() >= Timestamp.now() - 2
    finally:
        rebuilt.close()
    # A reader the runner left unscheduled (here: resumed from the mark cut while the partition was quiet) for
    # longer than idle_after_s while a record waits is not idle: the watermark must not pass a record it has not
    # read (a restarted stream's replay lost identity links to this on a loaded machine).
    producer = KafkaProducer(**kafka.client_config())
    later = hour_ago + dt.timedelta(seconds=30)
    value, headers = codec.encode("orders", dict(sample_events["orders"], event_time=later, event_id="a-later-event"))
    producer.send(topic, key=b"C1", value=value, headers=headers, partition=0).get(timeout=10)
    producer.close()
    time.sleep(3.2)
    resumed = partition_zero.create_reader(None, quiet)
    try:
        got = resumed.start()
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            assert resumed.get_watermark() < Timestamp.from_utc_datetime(later)
            got = resumed.advance()
        assert got and resumed.get_current().offset == 1
        assert resumed.get_watermark() == Timestamp.from_utc_datetime(later) - 1
    finally:
        resumed.close()


def test_a_quiet_partition_turns_idle_however_seldom_the_runner_schedules_its_reader(kafka, topic_prefix):
    """On a loaded machine a runner may run a quiet split's bundle only every few seconds. Two looks that find the
    partition at its end, idle_after_s apart with nothing read between, make it idle (CI: when looks had to be
    close together, the quiet partitions of a busy job never turned idle and held its windows back)."""
    from apache_beam.utils.timestamp import Timestamp

    ensure_topics(kafka, prefix=topic_prefix, partitions=1)
    source = ReadFromKafka(kafka, [topic_prefix + "orders"], idle_after_s=3, max_out_of_orderness_s=1).launch_source()
    reader = source.create_reader(None, None)
    try:
        assert not reader.start()
        assert reader.get_watermark() < Timestamp.now() - 3600  # at its end, but not yet quiet for long
        mark = reader.get_checkpoint_mark()
    finally:
        reader.close()
    time.sleep(3.2)  # the runner schedules nothing for this split meanwhile
    resumed = source.create_reader(None, mark)
    try:
        assert not resumed.start()
        assert resumed.get_watermark() >= Timestamp.now() - 2
    finally:
        resumed.close()


def test_readers_rebuilt_from_checkpoints_reuse_one_consumer_rather_than_leak_one_each(kafka, topic_prefix,
                                                                                       sample_events):
    """Prism resumes a split on whichever bundle processor is free; the reader it left is parked in another
    processor's cache and may never be closed. Its consumer went back to the pool at the checkpoint."""
    from kafka import KafkaProducer

    ensure_topics(kafka, prefix=topic_prefix, partitions=1)
    topic = topic_prefix + "orders"
    producer = KafkaProducer(**kafka.client_config())
    for n in range(5):
        value, headers = codec.encode("orders", dict(sample_events["orders"], event_id=f"o{n}"))
        producer.send(topic, key=b"C1", value=value, headers=headers, partition=0).get(timeout=10)
    producer.close()
    source = ReadFromKafka(kafka, [topic], event_time=EventDecoder.for_prefix(topic_prefix)).launch_source()
    partition_zero = [s for s in source.split(20) if s.start_offsets][0]
    abandoned, consumers, offsets, mark = [], [], [], None
    for _ in range(5):  # one record per "bundle", each on a reader rebuilt from the last checkpoint
        reader = partition_zero.create_reader(None, mark)
        got, deadline = reader.start(), time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            got = reader.advance()
        assert got
        offsets.append(reader.get_current().offset)
        consumers.append(reader.consumer)
        mark = reader.get_checkpoint_mark()
        assert reader.consumer is None, "the consumer went back to the pool with the checkpoint"
        abandoned.append(reader)  # never closed, like a reader parked in a cache nobody asks again
    assert offsets == [0, 1, 2, 3, 4], "each rebuilt reader went on after the checkpoint, nothing re-read"
    assert all(consumer is consumers[0] for consumer in consumers)


def test_local_runners_decline_dynamic_splits():
    """Prism's split requests on our source bundles led to NaN failures and lost keyed state (pipelines/runners.py)."""
    from apache_beam.runners.worker.bundle_processor import DataInputOperation

    runner_args("PrismRunner")
    assert DataInputOperation.try_split(None, 0.5, 10, ()) is None


def test_no_split_of_a_stream_runs_ahead_of_the_partitions_read_beside_it(monkeypatch):
    """A discovery split has nothing to read, so its own event time is the wall clock's, and a partition's split
    knows only its partition; alone either would take a stage's watermark past unread records whenever the runner
    lost sight of the other splits' holds. Each follows the lowest last report of its topics' partitions in this
    process, holds while one has not reported (not for ever), and forgets a report gone stale."""
    from transforms import kafka_source
    from transforms.kafka_source import KafkaCheckpointMark, KafkaPartitionSource, KafkaReadSpec, _PartitionClock

    monkeypatch.setattr(kafka_source, "_FIRST_ASKED", {})
    monkeypatch.setattr(kafka_source, "_REPORTS", collections.defaultdict(dict))
    spec = KafkaReadSpec(connection=None, topics=("p_orders",), start_offsets=(), stop_offsets=None,
                         known_partitions=(("p_orders", 2),), event_time=None, max_out_of_orderness_s=0,
                         launch="test-launch")
    discovery = KafkaPartitionSource(spec, (), discovers=True).create_reader(None, None)
    june = Timestamp.from_utc_datetime(dt.datetime(2026, 6, 20, tzinfo=dt.timezone.utc))
    july = Timestamp.from_utc_datetime(dt.datetime(2026, 7, 20, tzinfo=dt.timezone.utc))
    # partition 1 has read up to July; partition 0's split has not reported yet
    clocks = ((("p_orders", 1), _PartitionClock(newest=july.micros)),)
    ahead = KafkaPartitionSource(spec, (("p_orders", 1),)).create_reader(
        None, KafkaCheckpointMark(spec, {("p_orders", 1): 9}, clocks))
    now = time.time()
    monkeypatch.setattr(kafka_source.time, "time", lambda: now)
    assert discovery.get_watermark() == kafka_source.MIN_TIMESTAMP  # no partition has reported yet: held
    assert ahead.get_watermark() == kafka_source.MIN_TIMESTAMP  # partition 0 has not reported: held
    assert discovery.get_watermark() == kafka_source.MIN_TIMESTAMP
    reports = kafka_source._REPORTS["test-launch"]
    reports[("p_orders", 0)] = (june.micros, now - 5)
    kafka_source._REPORTS["another-job"][("p_orders", 0)] = (0, now)  # a job reading the same topic: not bound
    assert ahead.get_watermark() == june  # its own July is past partition 0's June
    assert discovery.get_watermark() == june  # the lowest of its topics' reports
    monkeypatch.setattr(kafka_source.time, "time", lambda: now + 2 * kafka_source.FRESH_REPORT_S)
    assert discovery.get_watermark() == june  # a split not scheduled for a while still holds it back
    reports[("p_orders", 0)] = (june.micros, now - kafka_source.FORGET_REPORT_AFTER_S - 1)  # gone elsewhere
    assert ahead.get_watermark() == july
    assert discovery.get_watermark() == july
    reports.clear()
    assert discovery.get_watermark() > Timestamp.now() - 30  # none counts, and it has waited: the wall clock


def test_a_stream_shares_its_partitions_among_as_many_readers_as_it_is_given():
    """One reader per worker slot, each with its share of the partitions, and the split that discovers new ones;
    without `readers`, one per partition. A split is not split again."""
    from transforms.kafka_source import KafkaPartitionSource, KafkaReadSpec

    offsets = tuple(((topic, p), 0) for topic in ("p_orders", "p_web") for p in range(3))
    spec = KafkaReadSpec(connection=None, topics=("p_orders", "p_web"), start_offsets=offsets, stop_offsets=None,
                         known_partitions=(("p_orders", 3), ("p_web", 3)), event_time=None, launch="test-launch")
    shared = KafkaPartitionSource(spec, offsets, discovers=True, readers=2).split(20)
    assert [split.start_offsets for split in shared[:2]] == [offsets[0::2], offsets[1::2]]
    assert shared[2].discovers and shared[2].start_offsets == ()
    assert len(shared) == 3 and all(split.split(20) == [split] for split in shared[:2])
    one_each = KafkaPartitionSource(spec, offsets, discovers=True).split(20)
    assert [split.start_offsets for split in one_each[:-1]] == [(item,) for item in offsets]
    assert KafkaPartitionSource(spec, offsets[:2], readers=5).split(20)[0].start_offsets == (offsets[0],)


def test_offsets_committed_for_lag_monitoring_never_step_back(kafka, topic_prefix):
    """A runner may finalize a reader's checkpoints out of order: the older one's offsets are not committed."""
    from kafka import KafkaConsumer, TopicPartition

    from transforms.kafka_source import KafkaReadSpec, _GroupCommitter

    ensure_topics(kafka, prefix=topic_prefix, partitions=2)
    topic, group = topic_prefix + "orders", f"{topic_prefix}lag"
    spec = KafkaReadSpec(connection=kafka, topics=(topic,), start_offsets=(), stop_offsets=None,
                         known_partitions=((topic, 2),), event_time=None, group_id=group, launch="test-launch")
    _GroupCommitter.commit(spec, {(topic, 0): 7, (topic, 1): 3})
    _GroupCommitter.commit(spec, {(topic, 0): 5, (topic, 1): 4})  # partition 0's older checkpoint, finalized late
    consumer = KafkaConsumer(**kafka.client_config(), group_id=group, enable_auto_commit=False)
    try:
        assert [consumer.committed(TopicPartition(topic, p)) for p in (0, 1)] == [7, 4]
    finally:
        consumer.close()
