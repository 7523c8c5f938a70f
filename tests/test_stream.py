"""`journeys stream` end to end on the real broker, into DuckDB and into the BigQuery emulator: a job killed with
SIGKILL mid-stream and restarted ends with tables identical to an uninterrupted run (no row lost, none
duplicated) and to the same tables computed in memory, dead letters = the injected malformed records, and BI
readers query DuckDB while the job writes."""
import datetime as dt
import subprocess
import sys
import time

import pytest

from pipelines.generate import GeneratorConfig, generate
from pipelines.generate.sinks import produce
from pipelines.kafka_topics import ensure_topics
from streaming_job import Sink, committed, ends_as, expected_tables, kill, started_jobs, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CONFIG = GeneratorConfig(customers=80, days=30, seed=43, start=dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc))


@pytest.fixture(params=["duckdb", pytest.param("bigquery", marks=pytest.mark.bigquery)])
def sink(request, tmp_path, topic_prefix):
    endpoint = request.getfixturevalue("bigquery_emulator") if request.param == "bigquery" else None
    return Sink(request.param, tmp_path, topic_prefix, endpoint)


@pytest.fixture
def start(topic_prefix, sink):
    with started_jobs(topic_prefix, sink) as start_run:
        yield start_run


def test_a_job_killed_mid_stream_and_restarted_ends_as_an_uninterrupted_run(kafka, topic_prefix, sink, start):
    records = generate(CONFIG, b"k", malformed=0.02)
    expected = expected_tables(sink, CONFIG)
    half, three_quarters = len(records) // 2, len(records) * 3 // 4
    ensure_topics(kafka, prefix=topic_prefix)
    produce(records[:half], kafka, topic_prefix=topic_prefix)

    job = start("restarted")
    wait_for(lambda: committed(sink.snapshot("restarted")) > 0, "the first commit")
    produce(records[half:three_quarters], kafka, topic_prefix=topic_prefix)
    time.sleep(3)  # mid-stream: the new records are being read, some committed, some not
    kill(job)
    committed_before_kill = committed(sink.snapshot("restarted"))
    assert 0 < committed_before_kill < len(records)
    produce(records[three_quarters:], kafka, topic_prefix=topic_prefix)

    job = start("restarted")
    if sink.kind == "duckdb":  # a BI tool in another process reads while the job writes
        for _ in range(3):
            shown = subprocess.run([sys.executable, "-m", "pipelines.cli", "sql", "--warehouse",
                                    str(sink.published("restarted")), "SELECT sum(next_offset) FROM source_offsets"],
                                   capture_output=True, text=True, timeout=60)
            assert shown.returncode == 0 and int(shown.stdout.split()[-1]) >= committed_before_kill, shown.stderr
            time.sleep(1)
    restarted = ends_as(expected, sink, "restarted", job, len(records), restart=start)
    kill(job)

    job = start("uninterrupted")
    uninterrupted = ends_as(expected, sink, "uninterrupted", job, len(records), restart=start)
    kill(job)

    assert restarted == uninterrupted  # every table, the dead letters and the offsets
    assert len(restarted["touchpoints"]) > 0 and len(restarted["order_attribution"]) > 0
    malformed = [r for r in records if r.malformed]
    assert len(restarted["dead_letters"]) == len(malformed) > 0
