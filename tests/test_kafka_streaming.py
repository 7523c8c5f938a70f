"""Streaming reads of the real broker with `journeys count --streaming` as a separate process: windows fire
while data still flows, a killed job resumes without loss, idle partitions do not stall the watermark, new
partitions are picked up."""
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from pipelines.generate import GeneratorConfig, generate
from pipelines.generate.sinks import produce
from pipelines.kafka_topics import admin_client, ensure_topics
from transforms import codec
from transforms.json_lines import read_json_lines

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class CountJob:
    """`journeys count --streaming …` in its own process group, killed like a crashed worker would be."""

    def __init__(self, tmp_path, prefix, runner="PrismRunner", *extra):
        self.out, self.landed = tmp_path / "counts.jsonl", tmp_path / "landed.jsonl"
        self.command = [sys.executable, "-m", "pipelines.cli", "count", "--streaming", "--runner", runner,
                        "--topic-prefix", prefix, "--out", str(self.out), "--landed", str(self.landed), *extra]
        self.log = open(tmp_path / "job.log", "ab")
        self.process = None
        self.restarts = 0

    def start(self):
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def kill(self):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def wait_for(self, condition, timeout_s, what, restart_on_crash=False):
        """Poll until `condition()`. With restart_on_crash, a job that died is restarted (with --resume, as a
        supervisor would) up to three times: Beam 2.77's SDK sometimes fails a Prism split request with
        "cannot convert float NaN to integer" at job start. The test's own assertions still decide."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            if self.process.poll() is not None:
                assert restart_on_crash and self.restarts < 3, \
                    f"job exited ({self.process.returncode}); see {self.log.name}"
                self.restarts += 1
                self.start()
            time.sleep(0.5)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGUSR1)  # the job prints its threads' stacks into its log
            time.sleep(2)
        tail = Path(self.log.name).read_bytes()[-6000:].decode(errors="replace")
        raise AssertionError(f"{what} not within {timeout_s}s; the end of {self.log.name}:\n{tail}")


def _produce_in_background(records, connection, prefix, rate):
    thread = threading.Thread(target=produce, args=(records, connection), kwargs=dict(topic_prefix=prefix, rate=rate))
    thread.start()
    return thread


@pytest.mark.parametrize("runner", ["PrismRunner", "DirectRunner"])
def test_event_time_windows_fire_while_events_still_flow(kafka, topic_prefix, tmp_path, runner):
    records = generate(GeneratorConfig(customers=250, days=12, seed=41), b"k")
    ensure_topics(kafka, prefix=topic_prefix)
    # Idleness is not what this tests: topics still empty when the job starts must not turn idle and move the
    # watermark to today's clock, past the generated (historical) event times, before the producer gets going.
    job = CountJob(tmp_path, topic_prefix, runner, "--window-seconds", "86400", "--idle-after-seconds", "600").start()
    try:
        producer = _produce_in_background(records, kafka, topic_prefix, rate=len(records) / 30)  # ~30 s of events
        job.wait_for(lambda: read_json_lines(job.out), 60, "a first window result")
        assert producer.is_alive(), "a window fired only after all events were sent"
        first = read_json_lines(job.out)
        producer.join()
        job.wait_for(lambda: len(read_json_lines(job.out)) > len(first), 60, "more window results")
    finally:
        job.kill()
    # Windows are whole event-time days, fired in order of the watermark.
    starts = [dt.datetime.fromisoformat(row["window_start"]) for row in read_json_lines(job.out)]
    assert all(start.hour == 0 and start.minute == 0 for start in starts)


def test_killed_job_resumes_from_its_offsets_with_nothing_lost_or_doubled(kafka, topic_prefix, tmp_path):
    records = generate(GeneratorConfig(customers=300, days=10, seed=43), b"k", malformed=0.02)
    ensure_topics(kafka, prefix=topic_prefix)
    producer = _produce_in_background(records, kafka, topic_prefix, rate=len(records) / 25)
    job = CountJob(tmp_path, topic_prefix, "PrismRunner", "--resume").start()
    try:
        job.wait_for(lambda: len(read_json_lines(job.landed)) > 300, 90, "300 landed records", restart_on_crash=True)
    finally:
        job.kill()  # SIGKILL mid-stream: no clean shutdown, no final checkpoint
    killed_at = len(read_json_lines(job.landed))
    assert killed_at < len(records), "the kill came after everything had landed"
    restarted = CountJob(tmp_path, topic_prefix, "PrismRunner", "--resume").start()
    try:
        producer.join()
        restarted.wait_for(lambda: len(read_json_lines(job.landed)) >= len(records), 120, "every record landed",
                           restart_on_crash=True)
        time.sleep(2)  # anything beyond the total would be a duplicate: give it a moment to show up
    finally:
        restarted.kill()
    landed = read_json_lines(job.landed)
    coordinates = Counter((row["topic"], row["partition"], row["offset"]) for row in landed)
    assert max(coordinates.values()) == 1, "a record landed twice"
    assert len(coordinates) == len(records), "a record was lost"
    assert Counter(row["event_id"] for row in landed if row["event_id"]) == Counter(
        r.event["event_id"] for r in records if r.event is not None)
    assert sum(row["kind"] == "dead_letter" for row in landed) == sum(1 for r in records if r.malformed)


def _send_now_orders(connection, topic, partition, stop: threading.Event, sample_order):
    """Orders with event time = now, into one partition only, ten a second, until told to stop."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**connection.client_config())
    n = 0
    while not stop.is_set():
        order = dict(sample_order, event_id=f"idle-{n}", event_time=dt.datetime.now(dt.timezone.utc).replace(
            microsecond=0))
        value, headers = codec.encode("orders", order)
        producer.send(topic, key=b"C1", value=value, headers=headers, partition=partition)
        n += 1
        time.sleep(0.1)
    producer.flush()
    producer.close()


def test_idle_partitions_do_not_hold_the_watermark_back(kafka, topic_prefix, tmp_path, sample_events):
    """Partition 1 of orders gets one record an hour old, then nothing; eight other partitions get nothing at all.
    Partition 0 gets orders timed now, ten a second: their 2-second windows must close while they flow.
    (The reader-level test in test_kafka_source.py shows the held-back watermark before idleness sets in;
    Prism itself was seen not to hold a stage back for a quiet split, so only the positive case is end to end.)"""
    from kafka import KafkaProducer

    ensure_topics(kafka, prefix=topic_prefix, partitions=3)
    hour_ago = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(hours=1)
    value, headers = codec.encode("orders", dict(sample_events["orders"], event_time=hour_ago))
    producer = KafkaProducer(**kafka.client_config())
    producer.send(topic_prefix + "orders", key=b"C1", value=value, headers=headers, partition=1).get(timeout=10)
    producer.close()
    job = CountJob(tmp_path, topic_prefix, "PrismRunner", "--window-seconds", "2", "--idle-after-seconds", "3",
                   "--max-out-of-orderness-seconds", "1").start()
    # The orders keep coming until a window of now has closed: partition 0 never turns idle itself, so only the
    # quiet partitions' idleness can move the watermark (on a slow machine the job may take long to start).
    stop_sending = threading.Event()
    sender = threading.Thread(target=_send_now_orders,
                              args=(kafka, topic_prefix + "orders", 0, stop_sending, sample_events["orders"]))
    sender.start()
    try:
        job.wait_for(lambda: any(r["window_start"] > hour_ago.replace(tzinfo=None).isoformat()
                                 for r in read_json_lines(job.out)), 120, "a window of now")
        assert sender.is_alive(), "the sender died: the window may have closed after the orders stopped"
    finally:
        stop_sending.set()
        sender.join()
        job.kill()


def test_partitions_added_while_running_are_read(kafka, topic_prefix, tmp_path, sample_events):
    from kafka import KafkaProducer
    from kafka.admin import NewPartitions

    ensure_topics(kafka, prefix=topic_prefix, partitions=2)
    topic = topic_prefix + "orders"
    job = CountJob(tmp_path, topic_prefix, "PrismRunner", "--discovery-interval-seconds", "2").start()
    producer = KafkaProducer(**kafka.client_config())
    try:
        value, headers = codec.encode("orders", sample_events["orders"])
        producer.send(topic, key=b"C1", value=value, headers=headers, partition=0).get(timeout=10)
        job.wait_for(lambda: read_json_lines(job.landed), 60, "the first record")
        admin = admin_client(kafka)
        admin.create_partitions({topic: NewPartitions(total_count=3)})
        admin.close()
        producer.close()
        producer = KafkaProducer(**kafka.client_config())  # fresh metadata: it knows partition 2
        producer.send(topic, key=b"C1", value=value, headers=headers, partition=2).get(timeout=10)
        job.wait_for(lambda: any(r["partition"] == 2 for r in read_json_lines(job.landed)), 60,
                     "a record of the new partition")
    finally:
        producer.close()
        job.kill()
