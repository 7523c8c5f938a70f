"""A `journeys stream` job as the streaming and fault tests drive it: started in its own process group, killed
with SIGKILL, and its warehouse (DuckDB or the BigQuery emulator) read back as snapshots of every table."""
import contextlib
import dataclasses
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import apache_beam as beam
import duckdb
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from pipelines.generate import records_by_topic
from schemas.contracts import contract, contracts
from transforms.bigquery_warehouse import BigQueryTarget
from transforms.failed_events import FAILED
from transforms.journey_tables import TABLES, CustomerJourneyTables
from transforms.json_lines import AppendJsonLines, read_json_lines
from transforms.pseudonymise import Pseudonymiser, key_secret
from transforms.warehouse import latest_rows, open_warehouse

# A partition jumps to the wall clock only after FLUSH_AFTER_S without records: longer than the first run lives,
# so records produced while the test runs are never late; once everything is read, the watermark passes every
# event and the tables end as a backfill's.
FLUSH_AFTER_S = 75
STREAM_OPTIONS = ["--commit-every-s", "3", "--update-every-s", "15", "--flush-after-idle-s", str(FLUSH_AFTER_S),
                  "--stalled-after-s", "120",
                  "--log-every-s", "5"]
# Processing history, not results: when a job first saw a record.
VOLATILE = {"dead_letters": {"first_seen"}}


class Sink:
    def __init__(self, kind, tmp_path, prefix, endpoint=None):
        self.kind, self.tmp_path, self.prefix, self.endpoint = kind, tmp_path, prefix, endpoint

    def args(self, run: str) -> list[str]:
        if self.kind == "duckdb":
            return ["--warehouse", str(self.tmp_path / f"{run}.duckdb")]
        return ["--bigquery-project", "journeys-local", "--bigquery-dataset", f"{self.prefix}{run}",
                "--bigquery-endpoint", self.endpoint]

    def target(self, run: str):
        if self.kind == "duckdb":
            return self.tmp_path / f"{run}.duckdb"
        return BigQueryTarget("journeys-local", f"{self.prefix}{run}", endpoint=self.endpoint)

    def published(self, run: str):
        return self.tmp_path / f"{run}.published.duckdb"

    def snapshot(self, run: str) -> dict | None:
        """Every table's rows (as sorted tuples of text) and the stored offsets; None before the first commit."""
        # dq_results and quarantine name their runs and times: they differ between any two runs
        queries = {t: f"SELECT * FROM {{}}{t}" for t in contracts() if t not in ("dq_results", "quarantine")}
        queries["source_offsets"] = "SELECT topic, `partition`, next_offset FROM {}source_offsets"
        if self.kind == "duckdb":
            if not self.published(run).exists():
                return None
            with duckdb.connect(str(self.published(run)), read_only=True) as con:
                con.execute("SET TimeZone = 'UTC'")
                return {t: _rows(t, con.execute(q.format("").replace("`", '"'))) for t, q in queries.items()}
        client = self.target(run).client()
        try:
            client.get_table(f"journeys-local.{self.prefix}{run}.source_offsets")
        except Exception:
            return None
        dataset = f"`journeys-local.{self.prefix}{run}`."
        return {t: _rows(t, client.query(q.format(dataset)).result()) for t, q in queries.items()}


def _rows(table, result) -> list[tuple]:
    if hasattr(result, "description"):
        names = [d[0] for d in result.description]
        rows = [dict(zip(names, values)) for values in result.fetchall()]
    else:
        rows = [dict(row.items()) for row in result]
    skip = VOLATILE.get(table, set())
    return sorted(tuple(str(v) for k, v in sorted(row.items()) if k not in skip) for row in rows)


def start_job(prefix, sink, run, env: dict | None = None, runner: str = "PrismRunner", options=()):
    """`journeys stream` with STREAM_OPTIONS; `options` come after them, so they override."""
    command = [sys.executable, "-m", "pipelines.cli", "stream", "--runner", runner, "--topic-prefix", prefix,
               *sink.args(run), *STREAM_OPTIONS, *options]
    log = open(sink.tmp_path / f"{run}.log", "ab")
    # Its own session: SIGKILL to the group takes the job's Prism runner with it, as a crashed host would (a job on
    # a Flink cluster runs on: the next launcher takes it over).
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            start_new_session=True)


@contextlib.contextmanager
def started_jobs(prefix, sink, runner: str = "PrismRunner"):
    """start(run, env=None, options=()) → a streaming job; every job started is killed on the way out, also when a
    test fails half-way (a job on a Flink cluster runs on: cancel it too, see the flink_jobs fixture)."""
    started = []

    def start(run: str, env: dict | None = None, options=()):
        started.append(start_job(prefix, sink, run, env, runner, options))
        return started[-1]

    try:
        yield start
    finally:
        for job in started:
            if job.poll() is None:
                kill(job)


def kill(job):
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=30)


def committed(snapshot) -> int:
    """Records committed: the sum of the stored next offsets (rows are sorted by column name: next_offset first)."""
    return sum(int(next_offset) for next_offset, _, _ in snapshot["source_offsets"]) if snapshot else 0


def results(snapshot) -> dict:
    return {t: rows for t, rows in snapshot.items() if t not in ("dead_letters", "source_offsets")}


def tables_in_memory(config, out_dir) -> dict[str, list[dict]]:
    """Every table computed in memory from the world's valid events (no Kafka, no warehouse): the latest row per
    key, as the pipeline emitted it (JSON lines in out_dir)."""
    pseudonyms = Pseudonymiser(key_secret())  # as the pipeline's decoder replaces personal ids
    with TestPipeline(runner="FnApiRunner") as pipeline:
        topics = {topic: (pipeline | f"Create{topic}" >> beam.Create([pseudonyms.record(topic, r) for r in records])
                          | f"Time{topic}" >> beam.Map(
                              lambda r: TimestampedValue(r, Timestamp.from_utc_datetime(r["event_time"]))))
                  for topic, records in records_by_topic(config, b"k").items()}
        tables = topics | CustomerJourneyTables()
        tables[FAILED] = tables[FAILED] | "FailedAsRows" >> beam.Map(dataclasses.asdict)
        for name, rows in tables.items():
            _ = rows | f"Write{name}" >> beam.ParDo(AppendJsonLines(str(out_dir / f"{name}.jsonl")))
    assert read_json_lines(out_dir / f"{FAILED}.jsonl") == [], "a step failed on a valid event"
    return {name: latest_rows(name, read_json_lines(out_dir / f"{name}.jsonl")) for name in TABLES}


def expected_tables(sink, config) -> dict:
    """Every table computed in memory from the valid events, landed by the same warehouse code."""
    tables = {name: [_typed(name, row) for row in rows]
              for name, rows in tables_in_memory(config, sink.tmp_path).items()}
    warehouse = open_warehouse(sink.target("expected"))
    try:
        warehouse.commit(tables)
        warehouse.publish()
    finally:
        warehouse.close()
    return results(sink.snapshot("expected"))


def _typed(table: str, row: dict) -> dict:
    """A row read back from JSON lines, its timestamps, dates and decimals parsed again."""
    parse = {"timestamp": dt.datetime.fromisoformat, "date": dt.date.fromisoformat}
    return {**row, **{c.name: Decimal(str(row[c.name])) if c.decimal else parse[c.type](row[c.name])
                      for c in contract(table).columns
                      if (c.decimal or c.type in parse) and row.get(c.name) is not None}}


def _differences(got: dict, expected: dict) -> str:
    lines = []
    for table in expected:
        missing, extra = set(expected[table]) - set(got[table]), set(got[table]) - set(expected[table])
        if missing or extra:
            lines.append(f"{table}: {len(missing)} missing, e.g. {sorted(missing)[:2]}; "
                         f"{len(extra)} unexpected, e.g. {sorted(extra)[:2]}")
    return "\n".join(lines)


# Exits a supervisor (systemd, Kubernetes) answers with a restart: the runner stopped handing out work
# (transforms/liveness.py), or the broker was unreachable as the job started (pipelines/cli.py).
RESTARTED_ON = {4: "stalled", 3: "broker unreachable at start"}


def ends_as(expected, sink, run, job, records: int, timeout_s: float = 600.0, restart=None) -> dict:
    """Wait until every record is committed and every table equals the expected one. With `restart` (run → a new
    job), a job that exits as in RESTARTED_ON is restarted, as its supervisor would."""
    deadline, snapshot = time.time() + timeout_s, None
    while time.time() < deadline:
        if job.poll() is not None:
            log = (sink.tmp_path / f"{run}.log").read_text()[-3000:]
            assert restart and job.returncode in RESTARTED_ON, f"{run} exited with {job.returncode}:\n{log}"
            print(f"{run} exited ({RESTARTED_ON[job.returncode]}); restarted as a supervisor would")
            job = restart(run)
        snapshot = sink.snapshot(run)
        if snapshot and committed(snapshot) == records and results(snapshot) == expected:
            return snapshot
        time.sleep(3)
    job.send_signal(signal.SIGUSR1)  # the job prints its threads' stacks into its log: where a stalled job waits
    time.sleep(2)
    tail = (sink.tmp_path / f"{run}.log").read_bytes()[-8000:].decode(errors="replace")
    raise AssertionError(f"{run} did not end as expected within {timeout_s} s: {committed(snapshot)} of {records} "
                         f"records committed\n" + (_differences(results(snapshot), expected) if snapshot else "")
                         + f"\nthe end of its log:\n{tail}")


def with_poison(config, seed: int, malformed: float = 0.0):
    """The world's records (with `malformed` of them malformed) and the bad-input corpus (every class, twice) at
    random places among them; the corpus."""
    import random

    from pipelines.generate import generate
    from pipelines.generate.bad_inputs import bad_inputs

    records = generate(config, b"k", malformed=malformed)
    valid = records_by_topic(config, b"k")
    corpus = bad_inputs(valid["orders"][0], valid["web_sessions"][0]) + bad_inputs(valid["orders"][-1],
                                                                                   valid["web_sessions"][-1])
    shuffle = random.Random(seed)
    for bad in corpus:
        records.insert(shuffle.randrange(len(records) + 1), bad.record)
    return records, corpus


KAFKA_SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "local" / "kafka.sh"


def restart_broker(down_s: float = 10.0) -> None:
    """The local broker stopped, away for down_s, and started again on the same data (a new process)."""
    before = _broker_pid()
    subprocess.run([str(KAFKA_SCRIPT), "down"], check=True, timeout=180, capture_output=True)
    time.sleep(down_s)
    subprocess.run([sys.executable, "-m", "pipelines.cli", "kafka", "up", "--no-topics"], check=True, timeout=180,
                   capture_output=True)
    assert _broker_pid() not in (None, before), "the broker was not restarted"


def _broker_pid() -> str | None:
    shown = subprocess.run([str(KAFKA_SCRIPT), "status"], capture_output=True, text=True)
    return next((word.split("=", 1)[1] for word in shown.stdout.split() if word.startswith("pid=")), None)


def dead_letter_reasons(sink, run) -> list[tuple]:
    """(reason, stage) of every dead letter the run's published copy holds, sorted."""
    with duckdb.connect(str(sink.published(run)), read_only=True) as con:
        return sorted(con.execute("SELECT reason, stage FROM dead_letters").fetchall())


def wait_for(condition, what, timeout_s=240.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if condition():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")
