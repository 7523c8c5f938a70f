"""Each event counted once: an event delivered again on its partition is a dead letter (transforms/dedupe.py)."""
import subprocess
import sys

import duckdb
import pytest

from pipelines.generate import GeneratorConfig, generate
from pipelines.generate.sinks import produce
from pipelines.kafka_topics import ensure_topics
from transforms import codec
from transforms.dedupe import RecentEventIds, recent_event_ids


def test_an_id_seen_within_the_horizon_is_a_duplicate_and_an_older_one_is_forgotten():
    recent = RecentEventIds(horizon=2, next_offset=0)
    assert [recent.seen(i, n) for n, i in enumerate(["a", "b", "a", "c", "b", "a"])] == [
        False, False, True, False, True, False]  # "a" fell out of the last two when "c" came
    assert recent.next_offset == 6


def test_a_reader_resuming_where_this_process_left_off_reuses_its_ids_else_reads_back():
    read_back = []

    def back(first, end):
        read_back.append((first, end))
        return [(n, f"e{n}") for n in range(first, end)]

    recent = recent_event_ids("launch-1", ("orders", 0), 50, 10, back)
    assert read_back == [(40, 50)] and recent.seen("e45", 50) and not recent.seen("e39", 51)
    assert recent_event_ids("launch-1", ("orders", 0), 52, 10, back) is recent and len(read_back) == 1
    assert recent_event_ids("launch-1", ("orders", 0), 30, 10, back) is not recent and read_back[-1] == (20, 30)
    assert recent_event_ids("launch-1", ("orders", 1), 0, 10, back).next_offset == 0 and len(read_back) == 2


@pytest.mark.integration
def test_a_resumed_reader_reads_back_and_catches_a_retry_of_an_event_read_before_it(kafka, topic_prefix,
                                                                                    sample_events):
    """A split resumed from a checkpoint at offset 2 (in a new process, or after a restart) meets the retry of the
    event at offset 0: it reads the partition back from before its offset and counts the event once."""
    from transforms.decode_events import DeadLetter, EventDecoder
    from transforms.kafka_source import KafkaCheckpointMark, KafkaPartitionSource, KafkaReadSpec

    ensure_topics(kafka, prefix=topic_prefix, partitions=1)
    order, other = sample_events["orders"], dict(sample_events["orders"], event_id="another-event")
    from kafka import KafkaProducer
    producer = KafkaProducer(**kafka.client_config())
    for record in (order, other, order):  # the third is the first one's retry
        producer.send(topic_prefix + "orders", codec.encode("orders", record)[0], key=b"C1", partition=0)
    producer.flush()
    producer.close()
    topic = (topic_prefix + "orders", 0)
    spec = KafkaReadSpec(kafka, (topic[0],), ((topic, 0),), ((topic, 3),), ((topic[0], 1),),
                         EventDecoder.for_prefix(topic_prefix), launch="resumed-" + topic_prefix)
    reader = KafkaPartitionSource(spec, ((topic, 0),)).create_reader(None, KafkaCheckpointMark(spec, ((topic, 2),)))
    try:
        available = reader.start()
        while not available and not reader.finished():  # the first polls may come back empty
            available = reader.advance()
        dead = reader.get_current().decoded
        assert isinstance(dead, DeadLetter) and (dead.offset, dead.stage, dead.reason) == (2, "dedupe",
                                                                                            "duplicate_event")
        assert not reader.advance() and reader.finished()
    finally:
        reader.close()


@pytest.mark.integration
@pytest.mark.slow
def test_a_backfill_of_events_sent_twice_lands_the_same_tables_as_one_of_each(kafka, topic_prefix, tmp_path):
    """An at-least-once producer's retries (a refund sent twice among them) change no table: each copy is a dead
    letter, and records in = landed + dead-lettered."""
    config = GeneratorConfig(customers=40, days=20, seed=12)
    once, twice = generate(config, b"k"), generate(config, b"k", duplicates=0.15)
    retried = [r for r in twice if r.malformed == "duplicate"]
    assert any(codec.decode("orders", r.value, r.headers)["status"] == "refunded" for r in retried
               if r.topic == "orders") or len(retried) > 20
    tables = {}
    for name, records in (("once", once), ("twice", twice)):
        prefix = f"{topic_prefix}{name}_"
        ensure_topics(kafka, prefix=prefix)
        produce(records, kafka, topic_prefix=prefix)
        warehouse = tmp_path / name / "journeys.duckdb"
        done = subprocess.run([sys.executable, "-m", "pipelines.cli", "backfill", "--topic-prefix", prefix,
                               "--warehouse", str(warehouse)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        with duckdb.connect(str(warehouse), read_only=True) as con:
            tables[name] = {t: sorted(map(str, con.execute(f'SELECT * FROM "{t}"').fetchall()))
                            for t in ("order_attribution", "channel_attribution_daily", "customers",
                                      "retention_cohorts", "social_impact", "social_impact_effects", "touchpoints")}
            dead = dict(con.execute("SELECT reason, count(*) FROM dead_letters GROUP BY ALL").fetchall())
            offsets = con.execute("SELECT sum(next_offset) FROM source_offsets").fetchone()[0]
        if name == "twice":
            assert dead == {"duplicate_event": len(retried)} and offsets == len(records)
    assert tables["twice"] == tables["once"]



@pytest.mark.integration
def test_a_reader_rebuilt_after_a_dead_letter_reuses_the_ids_without_reading_back(kafka, topic_prefix, sample_events,
                                                                                  monkeypatch):
    """Runners rebuild a split's reader at every bundle: one that resumes where this process read up to, even
    past a record that was no event, must not read the partition back."""
    from kafka import KafkaProducer

    from transforms import kafka_source
    from transforms.decode_events import EventDecoder
    from transforms.kafka_source import KafkaPartitionSource, KafkaReadSpec

    ensure_topics(kafka, prefix=topic_prefix, partitions=1)
    producer = KafkaProducer(**kafka.client_config())
    for value in (codec.encode("orders", sample_events["orders"])[0], b"\xff\xfe not an event"):
        producer.send(topic_prefix + "orders", value, key=b"C1", partition=0)
    producer.flush()
    producer.close()
    topic = (topic_prefix + "orders", 0)
    spec = KafkaReadSpec(kafka, (topic[0],), ((topic, 0),), ((topic, 2),), ((topic[0], 1),),
                         EventDecoder.for_prefix(topic_prefix), launch="rebuilt-" + topic_prefix)
    source = KafkaPartitionSource(spec, ((topic, 0),))
    reader = source.create_reader(None, None)
    available = reader.start()
    while available or not reader.finished():
        available = reader.advance()
    mark = reader.get_checkpoint_mark()
    reader.close()
    assert dict(mark.next_offsets) == {topic: 2}
    monkeypatch.setattr(kafka_source._KafkaReader, "_read_back", lambda *_: pytest.fail("read back"))
    rebuilt = source.create_reader(None, mark)
    rebuilt.recent[topic] = kafka_source.recent_event_ids(spec.launch, topic, 2, spec.dedupe_horizon, None)
    assert rebuilt.recent[topic].seen(sample_events["orders"]["event_id"], 2)  # the ids it had
    rebuilt.close()
