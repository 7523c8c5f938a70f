"""`journeys stream` end to end on the real broker, into DuckDB and into the BigQuery emulator: a job killed with
SIGKILL mid-stream and restarted ends with tables identical to an uninterrupted run (no row lost, none
duplicated) and to the same tables computed in memory, dead letters = the injected malformed records, and BI
readers query DuckDB while the job writes."""
import datetime as dt
import subprocess
import sys
import time

import duckdb
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


@pytest.mark.parametrize("runner", ["PrismRunner", pytest.param("FlinkRunner", marks=pytest.mark.flink)])
def test_a_stream_after_a_backfill_publishes_every_commit_and_ends_as_one_backfill(kafka, topic_prefix, tmp_path,
                                                                                   runner, request):
    """The demo's sequence: a backfill of the history, then `journeys stream` on the same topics and warehouse while
    the rest arrives. Every commit of the stream passes its block checks (publishes), and the tables end as one
    backfill of all events."""
    if runner == "FlinkRunner":
        request.getfixturevalue("flink_jobs")  # the cluster, and the job cancelled afterwards
    sink = Sink("duckdb", tmp_path, topic_prefix)
    records = generate(CONFIG, b"k", malformed=0.02)
    expected = expected_tables(sink, CONFIG)
    history = len(records) * 2 // 3
    ensure_topics(kafka, prefix=topic_prefix)
    produce(records[:history], kafka, topic_prefix=topic_prefix)
    backfill = subprocess.run([sys.executable, "-m", "pipelines.cli", "backfill", "--topic-prefix", topic_prefix,
                               *sink.args("sequence"), "--max-event-age-hours", "1000000"],
                              capture_output=True, text=True, timeout=600)
    assert backfill.returncode == 0, backfill.stderr[-3000:]
    with started_jobs(topic_prefix, sink, runner) as start:
        job = start("sequence")
        produce(records[history:], kafka, topic_prefix=topic_prefix)
        ends_as(expected, sink, "sequence", job, len(records))
        kill(job)
    # the published copy, as readers see it: on Flink the writer lives in the cluster's worker after the launcher
    with duckdb.connect(str(sink.published("sequence")), read_only=True) as con:
        runs = con.execute("SELECT run_kind, count(DISTINCT run_id) FROM dq_results GROUP BY ALL ORDER BY 1").fetchall()
        failed = con.execute("SELECT DISTINCT table_name, expectation FROM dq_results WHERE NOT success AND "
                             "severity = 'block' AND stage = 'checkpoint'").fetchall()
    assert [kind for kind, _ in runs] == ["backfill", "stream"] and runs[1][1] > 1
    assert failed == []


def test_a_stream_refuses_to_resume_from_offsets_it_can_never_read_up_to(kafka, topic_prefix, tmp_path, caplog):
    """Stored offsets of a topic that was recreated (its end now behind them) or that is no longer read would hold
    every commit for ever: the launch names them and what to do, and --forget-offsets drops them. Records deleted
    by retention are a warning."""
    from kafka import TopicPartition

    from pipelines import stream
    from pipelines.kafka_topics import admin_client
    from transforms.duckdb_warehouse import DuckDBWarehouse

    ensure_topics(kafka, prefix=topic_prefix, partitions=1)
    produce(generate(GeneratorConfig(customers=5, days=3, seed=4), b"k"), kafka, topic_prefix=topic_prefix)
    warehouse = DuckDBWarehouse(tmp_path / "journeys.duckdb")
    orders, sessions = topic_prefix + "orders", topic_prefix + "web_sessions"
    warehouse.commit({}, {(orders, 0): 1_000_000, (sessions, 0): 1, ("gone_orders", 0): 7})
    warehouse.close()
    args = lambda *more: stream.parse_args(["--topic-prefix", topic_prefix, "--warehouse",
                                            str(tmp_path / "journeys.duckdb"), *more])[0]
    caplog.set_level("WARNING", logger="journeys.stream")

    assert not stream.resumable(args())
    errors = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert f"cannot resume {orders}[0]: the stored offset 1,000,000 is beyond the partition's end" in errors
    assert "cannot resume gone_orders[0]: the partition is not among the topics read" in errors
    assert f"--forget-offsets gone_orders,{orders} " in errors and sessions + "[0]" not in errors

    admin = admin_client(kafka)
    admin.delete_records({TopicPartition(sessions, 0): 1})  # retention, as it were
    admin.close()
    caplog.clear()
    assert stream.resumable(args("--forget-offsets", f"{orders}:0,gone_orders"))
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    assert f"forgot the stored offset of {orders}[0]" in warnings
    assert "forgot the stored offset of gone_orders[0]" in warnings
    assert f"retention has deleted the first records of {sessions}[0] (from offset 1)" in warnings
    with duckdb.connect(str(tmp_path / "journeys.duckdb"), read_only=True) as con:
        assert con.execute("SELECT topic, next_offset FROM source_offsets").fetchall() == [(sessions, 1)]
