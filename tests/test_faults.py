"""The fault suite: `journeys stream` on the real broker into DuckDB while things go wrong.

- poison records of every bad-input class among the events, the job SIGKILLed three times at random points and the
  broker restarted once while it runs: the tables end identical to a clean run (computed in memory, landed by the
  same code), every record accounted for, and the dead letters exactly the poison records, each with its reason;
- the warehouse turning unwritable mid-stream: one clear error, the job stops, no offset advances past the last
  good commit, and once it is writable again a restart ends as a clean run;
- a topic's schema changed compatibly mid-stream (a new version with an optional field, registered while the job
  runs, then written by the producer): nothing dead-lettered, every order landed with its value.
(A broker down at start: tests/test_cli.py. Size: JOURNEYS_FAULT_CUSTOMERS customers over 30 days, about ten
events each; the default keeps CI under its time limit, as Prism handles some tens of events per second here.)
"""
import dataclasses
import datetime as dt
import io
import json
import os
import random
import struct
import subprocess
import time
from pathlib import Path

import fastavro

import duckdb
import pytest

from pipelines.generate import GeneratorConfig, generate
from pipelines.generate.records import ProducerRecord
from schemas import REGISTERED_DIR_ENV
from pipelines.generate.sinks import produce
from pipelines.kafka_topics import ensure_topics
from streaming_job import (Sink, committed, dead_letter_reasons, ends_as, expected_tables, kill, restart_broker,
                           started_jobs, wait_for, with_poison)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.faults]
REPO = Path(__file__).resolve().parents[1]
CONFIG = GeneratorConfig(customers=int(os.environ.get("JOURNEYS_FAULT_CUSTOMERS", "100")), days=30, seed=59,
                         start=dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc))


@pytest.fixture
def sink(tmp_path, topic_prefix):
    return Sink("duckdb", tmp_path, topic_prefix)


@pytest.fixture
def jobs(topic_prefix, sink):
    with started_jobs(topic_prefix, sink) as start:
        yield start


def _log(sink, run="faulty") -> str:
    return (sink.tmp_path / f"{run}.log").read_text()


def test_three_kills_and_a_broker_restart_end_as_a_clean_run(kafka, topic_prefix, sink, jobs):
    records, corpus = with_poison(CONFIG, seed=61)
    expected = expected_tables(sink, CONFIG)
    ensure_topics(kafka, prefix=topic_prefix)
    chunks = [records[i * len(records) // 5:(i + 1) * len(records) // 5] for i in range(5)]
    produce(chunks[0], kafka, topic_prefix=topic_prefix)
    job = jobs("faulty")
    wait_for(lambda: committed(sink.snapshot("faulty")) > 0, "the first commit")
    when = random.Random(67)
    committed_at_kills = []
    for chunk in chunks[1:4]:
        produce(chunk, kafka, topic_prefix=topic_prefix)
        time.sleep(when.uniform(1, 8))  # a random point: reading, between commits or inside one
        kill(job)
        committed_at_kills.append(committed(sink.snapshot("faulty")))
        job = jobs("faulty")
        if len(committed_at_kills) == 2:  # the broker goes away under the running job, and comes back
            wait_for(lambda: "resuming: the last run committed" in _log(sink).split("Serving JobManagement")[-1],
                     "the restarted job reading")
            restart_broker()
    produce(chunks[4], kafka, topic_prefix=topic_prefix)
    assert all(0 < n < len(records) for n in committed_at_kills), committed_at_kills

    # every table and every record committed; a job that exits as its supervisor would restart it, is restarted
    ends_as(expected, sink, "faulty", job, len(records), restart=jobs)
    assert dead_letter_reasons(sink, "faulty") == sorted((bad.reason, bad.stage) for bad in corpus)


def test_an_unwritable_warehouse_stops_the_job_with_a_clear_error_and_advances_no_offset(kafka, topic_prefix, sink,
                                                                                          jobs):
    records = generate(CONFIG, b"k")
    expected = expected_tables(sink, CONFIG)
    ensure_topics(kafka, prefix=topic_prefix)
    half = len(records) // 2
    produce(records[:half], kafka, topic_prefix=topic_prefix)
    job = jobs("blocked")
    wait_for(lambda: committed(sink.snapshot("blocked")) == half, "the first half committed")
    # The warehouse turns immutable, its folder and its files (root ignores permissions, not this): DuckDB can no
    # longer write its database or its write-ahead log, nor the publisher its copy. The job's log stays writable.
    folder = sink.tmp_path
    frozen = [str(path) for path in (folder, folder / "blocked.duckdb", folder / "blocked.duckdb.wal")
              if path.exists()]
    subprocess.run(["chattr", "+i", *frozen], check=True)
    try:
        produce(records[half:], kafka, topic_prefix=topic_prefix)
        try:
            job.wait(timeout=180)
        except subprocess.TimeoutExpired:
            pytest.fail("the job kept running with a warehouse it cannot write")
        assert job.returncode != 0
        log = (folder / "blocked.log").read_text()
        errors = [line for line in log.splitlines() if "warehouse write failed" in line]
        assert errors and str(folder / "blocked.duckdb") in errors[0], log[-3000:]
        assert f"nothing of this commit landed: no offset advanced past the last good commit ({half:,} records)" \
            in errors[0], errors[0]
    finally:
        subprocess.run(["chattr", "-i", *frozen], check=True)
    with duckdb.connect(str(folder / "blocked.duckdb"), read_only=True) as con:
        assert con.execute("SELECT sum(next_offset) FROM source_offsets").fetchone()[0] == half
    assert committed(sink.snapshot("blocked")) == half  # nothing landed past the last good commit
    ends_as(expected, sink, "blocked", jobs("blocked"), len(records), restart=jobs)


ORDERS_V2_ID = 1001  # registered after this build (schemas.REGISTERED_DIR_ENV)


def _orders_v2() -> dict:
    """orders v2: v1 plus an optional field, a backward- and forward-compatible change."""
    definition = json.loads((REPO / "schemas" / "topics" / "orders.v1.avsc").read_text())
    definition["fields"].append({"name": "loyalty_tier", "type": ["null", "string"], "default": None,
                                 "doc": "The customer's loyalty tier at the order, if a member."})
    return definition


def _as_v2(record, parsed) -> ProducerRecord:
    """An order re-encoded as its producer would after switching to v2 (Confluent framing, the new id)."""
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, ORDERS_V2_ID))
    fastavro.schemaless_writer(buffer, parsed, {**record.event, "schema_version": 2, "loyalty_tier": "gold"})
    return dataclasses.replace(record, value=buffer.getvalue())


def test_a_schema_changed_compatibly_mid_stream_loses_nothing(kafka, topic_prefix, sink, jobs, tmp_path):
    """The orders producer moves to a compatible v2 schema while the job runs. The second half of the month comes
    after the first half's partitions have gone idle: the job that streamed them ends with the tables of one
    backfill of all events (idle event time keeps the wall clock's pace, it does not leap to today)."""
    records = generate(CONFIG, b"k")  # Confluent Avro, v1
    expected = expected_tables(sink, CONFIG)
    registered = tmp_path / "registered-schemas"
    registered.mkdir()
    (registered / "registry.json").write_text(json.dumps({"schemas": []}))
    ensure_topics(kafka, prefix=topic_prefix)
    half = len(records) // 2
    produce(records[:half], kafka, topic_prefix=topic_prefix)
    env = {REGISTERED_DIR_ENV: str(registered)}
    # The second half must come before a flush makes it late (late records stitch otherwise), and on a loaded
    # machine the first half's commit can come later than FLUSH_AFTER_S after its partitions were read to the end.
    job = jobs("evolving", env=env, options=["--flush-after-idle-s", "300"])
    wait_for(lambda: committed(sink.snapshot("evolving")) == half, "the first half committed")
    time.sleep(15)  # every partition read to its end and quiet past --idle-after-s (10 s): idle

    # The new version is registered while the job runs, then the orders producer switches to it.
    (registered / "orders.v2.avsc").write_text(json.dumps(_orders_v2()))
    (registered / "registry.json").write_text(json.dumps({"schemas": [
        {"id": ORDERS_V2_ID, "topic": "orders", "version": 2, "file": "orders.v2.avsc"}]}))
    parsed = fastavro.parse_schema(_orders_v2(), named_schemas={})
    rest = [_as_v2(r, parsed) if r.topic == "orders" else r for r in records[half:]]
    assert sum(r.topic == "orders" for r in rest) > 0
    produce(rest, kafka, topic_prefix=topic_prefix)

    tables = ends_as(expected, sink, "evolving", job, len(records))
    assert tables["dead_letters"] == [] and len(tables["order_attribution"]) > 0