"""Restart of a stream on Flink: does resuming take longer as the history grows? A benchmark, not a test:

    .venv/bin/python deploy/bench/flink_restart.py --events 1000,100000 [--json FILE]

For each N of --events, on fresh topics of the local broker and a fresh DuckDB warehouse:
1. `journeys generate` produces about N records (30 simulated days; customers sized to N);
2. `journeys stream` (FlinkRunner, the cluster of `journeys flink up`) reads them; when the published copy's
   `sum(next_offset)` equals the records produced and a checkpoint completed after that, the checkpoint's sizes are
   taken from Flink's REST API (/jobs/<jid>/checkpoints: state_size, checkpointed_size);
3. SIGTERM to the launcher: it stops the job with a savepoint (timed; its size on disk is measured). When the
   savepoint does not complete within --savepoint-timeout-s, the launcher cancels the job and the restart resumes
   from its newest retained checkpoint (reported as `stopped_with: checkpoint`);
4. a small fixed batch of new customers (--batch-customers, ids past the history's) is produced;
5. the same `journeys stream` command again, timed from the launcher's start to: the job submitted, the job RUNNING
   (/jobs/overview), every task RUNNING (state restored; /jobs/<jid>), and the warehouse having committed the batch
   (published `sum(next_offset)` == every record produced).

The restart reads only the batch (its positions come from the savepoint), so what can grow with N is the state
restored from the savepoint (per-customer state; the read's own stays small since apache/beam#27648 is patched in the
job server, see checkpoint_growth.py). Verdict: restart-to-caught-up
at the largest N within --max-ratio of the smallest N's. Uses the Flink cluster of $JOURNEYS_FLINK_PORT and
$JOURNEYS_LOCAL_DIR (as `journeys stream` does); each N's checkpoints and savepoints are deleted afterwards unless
--keep-state.

The other Flink bench scripts (stream_freshness.py, backfill_engines.py, checkpoint_growth.py) import the helpers
here: a stream's launcher and its stop, the published offsets, the records in the topics, Flink's REST API.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from report import report

REPO = Path(__file__).resolve().parents[2]
JOURNEYS = [sys.executable, "-m", "pipelines.cli"]
# Measured: 6.1 records per customer at 200 customers, 6.4 at 1,000 (30 simulated days, seed 11)
RECORDS_PER_CUSTOMER_30_DAYS = 6.4
HISTORY_START = "2026-09-01"  # the generator's default first day
STOP_TIMEOUT_S = 360  # the launcher's stop-with-savepoint waits up to 300 s (its default) for the savepoint itself


# --- helpers the other Flink bench scripts import ---------------------------------------------------------------

def cluster():
    """The Flink cluster `journeys stream` submits to (JOURNEYS_FLINK_PORT, JOURNEYS_LOCAL_DIR)."""
    from pipelines.flink import LocalCluster

    return LocalCluster()


def rest(path: str, timeout_s: float = 10.0) -> dict:
    with urllib.request.urlopen(cluster().rest + path, timeout=timeout_s) as response:
        return json.loads(response.read() or b"{}")


def flink_job(name: str, since: float = 0.0) -> dict | None:
    """The newest job of this name submitted at or after `since` (epoch s), from /jobs/overview; None if none.
    A stopped run's job stays listed (FINISHED) under the same name: `since` tells the restarted one apart."""
    try:
        jobs = rest("/jobs/overview")["jobs"]
    except OSError:
        return None
    mine = [j for j in jobs if j["name"] == name and j["start-time"] >= since * 1000]
    return max(mine, key=lambda j: j["start-time"], default=None)


def tasks_running(job_id: str) -> bool:
    """Every vertex RUNNING: state restored and operators open (the job itself is RUNNING before its tasks are)."""
    try:
        vertices = rest(f"/jobs/{job_id}")["vertices"]
    except OSError:
        return False
    return bool(vertices) and all(v["status"] == "RUNNING" for v in vertices)


def cancel_jobs(name: str) -> list[str]:
    """Cancels what is left running of this job name (a launcher that did not stop it): the cluster's slots are few."""
    from pipelines.flink import Rest

    flink_rest = Rest(cluster().rest)
    jobs = flink_rest.running_jobs(name)
    for job_id in jobs:
        flink_rest.cancel(job_id)
    return jobs


def stream_job_name(stream_args: list[str]) -> str:
    """The Flink job name `journeys stream` derives from these arguments (its checkpoints and savepoints folder)."""
    from pipelines.stream import job_name, parse_args

    return job_name(*parse_args(stream_args))


def committed(published: Path) -> int:
    """Records committed: the published copy's sum of next offsets (0 before the first publish)."""
    import duckdb

    if not published.exists():
        return 0
    try:
        with duckdb.connect(str(published), read_only=True) as con:
            return int(con.execute("SELECT coalesce(sum(next_offset), 0) FROM source_offsets").fetchone()[0])
    except duckdb.Error:
        return 0  # swapped while opening: the next poll reads the new copy


def records_in_topics(prefix: str) -> int:
    """The sum of the topics' end offsets: the records produced (an idempotent producer leaves no gaps)."""
    from kafka import TopicPartition

    import schemas
    from transforms.kafka_connection import KafkaConnection

    consumer = KafkaConnection.from_env().consumer(group_id=None, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(prefix + t, p) for t in schemas.TOPICS
                      for p in consumer.partitions_for_topic(prefix + t) or ()]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def ensure_pseudonym_key() -> None:
    """The pipelines refuse to start without a pseudonym key (transforms/pseudonymise.py): a benchmark whose
    environment gives none makes one of its own, for the processes it starts."""
    if os.environ.get("JOURNEYS_PSEUDONYM_KEY_FILE") or os.environ.get("JOURNEYS_PSEUDONYM_KEY"):
        return
    import secrets

    key = Path(tempfile.mkdtemp(prefix="bench-key-")) / "pseudonym.key"
    key.write_text(secrets.token_hex(32) + "\n")
    key.chmod(0o600)
    os.environ["JOURNEYS_PSEUDONYM_KEY_FILE"] = str(key)


def start_stream(stream_args: list[str], log: Path) -> subprocess.Popen:
    """`journeys stream` in its own session (whatever it starts can be cleaned up as a group)."""
    ensure_pseudonym_key()
    return subprocess.Popen([*JOURNEYS, "stream", *stream_args], stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=REPO, env=os.environ)


def stop_stream(job: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> float | None:
    """SIGTERM to the launcher (on Flink: stop with a savepoint) and wait for it to exit; the seconds it took, or
    None when it had to be killed. Whatever is left of its session is killed afterwards."""
    started = time.monotonic()
    took = None
    if job.poll() is None:
        job.send_signal(signal.SIGTERM)
        try:
            job.wait(timeout=timeout_s)
            took = round(time.monotonic() - started, 2)
        except subprocess.TimeoutExpired:
            print(f"the launcher (pid {job.pid}) did not stop within {timeout_s} s: killed", file=sys.stderr)
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    job.wait()
    return took


def wait_until(condition, timeout_s: float, every_s: float = 0.5):
    """condition()'s first truthy value, or None after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    return None


def latest_checkpoint(job_id: str) -> dict | None:
    try:
        return rest(f"/jobs/{job_id}/checkpoints")["latest"]["completed"]
    except (OSError, KeyError, TypeError):
        return None


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def mib(n: float | None) -> float | None:
    return round(n / 2**20, 2) if n is not None else None


def print_table(header: tuple, rows: list[tuple]) -> None:
    cells = [[str(h) for h in header]] + [["-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)
                                            for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


# --- the benchmark ---------------------------------------------------------------------------------------------

def generate(prefix: str, customers: int, seed: int, days: float, start: str, log: Path, first_customer: int = 0
             ) -> None:
    command = [*JOURNEYS, "generate", "--customers", str(customers), "--first-customer", str(first_customer),
               "--days", str(days), "--start", start, "--seed", str(seed), "--topic-prefix", prefix]
    with open(log, "a") as out:
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=True, cwd=REPO)


def one_history(n: int, args, work: Path) -> dict:
    prefix = f"restart{uuid.uuid4().hex[:8]}_"
    warehouse = work / f"n{n}.duckdb"
    published = warehouse.with_suffix(".published.duckdb")
    log = work / f"n{n}.log"
    stream_args = ["--runner", "FlinkRunner", "--topic-prefix", prefix, "--warehouse", str(warehouse),
                   "--commit-every-s", str(args.commit_every_s), "--log-every-s", "30",
                   "--savepoint-timeout-s", str(args.savepoint_timeout_s), *args.stream_arg]
    stop_timeout_s = args.savepoint_timeout_s + 180  # and the cancel after it
    name = stream_job_name(stream_args)
    customers = max(1, round(n / RECORDS_PER_CUSTOMER_30_DAYS))
    result = {"events_requested": n, "customers": customers, "topic_prefix": prefix, "job_name": name,
              "log": str(log)}
    print(f"N={n}: topics {prefix}*, job {name}, log {log}", file=sys.stderr)
    generate(prefix, customers, args.seed, args.days, HISTORY_START, log)
    history = result["records"] = records_in_topics(prefix)

    started = time.time()
    first = start_stream(stream_args, log)
    try:
        if not wait_until(lambda: committed(published) >= history, args.catch_up_timeout_s, every_s=1):
            raise SystemExit(f"N={n}: {committed(published)} of {history} records committed after "
                             f"{args.catch_up_timeout_s} s; see {log}")
        caught_up = time.time()
        result["first_run_caught_up_s"] = round(caught_up - started, 1)
        result["first_run_records_per_s"] = round(history / (caught_up - started), 1)
        job = flink_job(name, since=started - 5)
        # a checkpoint that holds every record's state: triggered after the last commit
        checkpoint = wait_until(lambda: (c := latest_checkpoint(job["jid"]))
                                and c["trigger_timestamp"] / 1000 > caught_up and c, timeout_s=120, every_s=1)
        if checkpoint:
            result["checkpoint_before_stop"] = {"id": checkpoint["id"], "state_mib": mib(checkpoint["state_size"]),
                                                "checkpointed_mib": mib(checkpoint["checkpointed_size"]),
                                                "duration_s": checkpoint["end_to_end_duration"] / 1000}
    finally:
        result["stop_s"] = stop_stream(first, stop_timeout_s)
        result["left_running_cancelled"] = cancel_jobs(name)
    stopped = log.read_text(errors="replace")
    where = re.findall(r"with a savepoint at (file:[^;\s]+)", stopped)
    fallback = re.findall(r"cancelled it instead; a restart resumes from its newest retained checkpoint, (/\S+)",
                          stopped)
    if not (where or fallback):
        raise SystemExit(f"N={n}: the launcher logged neither a savepoint nor a checkpoint to resume from; see {log}")
    result["stopped_with"] = "savepoint" if where else "checkpoint"
    snapshot = Path(where[-1].removeprefix("file:")) if where else Path(fallback[-1])
    result["resumes_from"] = str(snapshot)
    result["snapshot_mib"] = mib(folder_bytes(snapshot))

    # new customers, after the history's last day: the restart has them, and only them, to read
    generate(prefix, args.batch_customers, args.seed + 1, args.days, _after(HISTORY_START, args.days), log,
             first_customer=customers)
    total = records_in_topics(prefix)
    result["batch_records"] = total - history

    restarted = time.time()
    second = start_stream(stream_args, log)
    marks: dict[str, float] = {}
    job = None
    try:
        deadline = time.monotonic() + args.restart_timeout_s
        while time.monotonic() < deadline and "caught_up" not in marks:
            job = flink_job(name, since=restarted - 1)
            now = time.time()
            if job:
                marks.setdefault("submitted", job["start-time"] / 1000)
                if job["state"] == "RUNNING":
                    marks.setdefault("running", now)
                    if "tasks_running" not in marks and tasks_running(job["jid"]):
                        marks["tasks_running"] = time.time()
            if committed(published) >= total:
                marks["caught_up"] = time.time()
            time.sleep(0.2)
        if job:
            restored = rest(f"/jobs/{job['jid']}/checkpoints")["latest"].get("restored") or {}
            result["restored_from"] = restored.get("external_path")
            result["restored_from_savepoint"] = restored.get("is_savepoint")
    finally:
        result["second_stop_s"] = stop_stream(second, stop_timeout_s)
        result["left_running_cancelled"] += cancel_jobs(name)
    for mark in ("submitted", "running", "tasks_running", "caught_up"):
        result[f"restart_to_{mark}_s"] = round(marks[mark] - restarted, 2) if mark in marks else None
    # the restart's launcher names what it resumed from: the snapshot just taken, not the topics' start
    resumed = re.findall(rf"resuming {name} from (\S+)", log.read_text(errors="replace"))
    result["launcher_resumed_from"] = resumed[-1] if resumed else None
    if not args.keep_state:
        for folder in (cluster().state / "checkpoints" / name, cluster().state / "savepoints" / name):
            shutil.rmtree(folder, ignore_errors=True)
    return result


def _after(start: str, days: float) -> str:
    import datetime as dt

    return (dt.date.fromisoformat(start) + dt.timedelta(days=days)).isoformat()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="1000,100000",
                        help="comma-separated history sizes, about this many records each (default: %(default)s)")
    parser.add_argument("--batch-customers", type=int, default=100,
                        help="new customers produced while the job is stopped (default: %(default)s)")
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--commit-every-s", type=float, default=2.0)
    parser.add_argument("--catch-up-timeout-s", type=float, default=4 * 3600,
                        help="longest wait for the first run to commit the history")
    parser.add_argument("--restart-timeout-s", type=float, default=900)
    parser.add_argument("--savepoint-timeout-s", type=float, default=900,
                        help="`journeys stream --savepoint-timeout-s`: then it cancels the job, and the restart resumes "
                             "from the newest retained checkpoint (default: %(default)s)")
    parser.add_argument("--max-ratio", type=float, default=1.5,
                        help="verdict: 'does not grow' when the largest history's restart-to-caught-up is at most "
                             "this times the smallest's (default: %(default)s)")
    parser.add_argument("--stream-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for `journeys stream` (repeatable), e.g. --stream-arg=--parallelism=1")
    parser.add_argument("--keep-state", action="store_true", help="keep each run's checkpoints and savepoints")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    sizes = [int(n) for n in args.events.split(",")]

    from pipelines.flink import LocalCluster

    if not LocalCluster().running():
        raise SystemExit("the Flink cluster is not running: journeys flink up (with the same JOURNEYS_FLINK_PORT)")
    work = Path(tempfile.mkdtemp(prefix="flink-restart-"))
    runs = [one_history(n, args, work) for n in sizes]
    rows = [(r["records"], r["customers"], r["first_run_caught_up_s"], r["stop_s"], r["stopped_with"],
             r["snapshot_mib"], (r.get("checkpoint_before_stop") or {}).get("state_mib"), r["restart_to_submitted_s"],
             r["restart_to_running_s"], r["restart_to_tasks_running_s"], r["restart_to_caught_up_s"]) for r in runs]
    small, large = runs[0], runs[-1]
    verdict = {}
    for measure in ("restart_to_running_s", "restart_to_caught_up_s"):
        if small[measure] and large[measure]:
            verdict[measure.removesuffix("_s") + "_ratio"] = round(large[measure] / small[measure], 2)
    grows = verdict.get("restart_to_caught_up_ratio")
    verdict["verdict"] = ("unmeasured" if grows is None or len(runs) < 2 else
                          "restart time does not grow with history" if grows <= args.max_ratio else
                          "restart time grows with history")
    report({"benchmark": "flink_restart", "work_dir": str(work), "flink": cluster().rest,
            "batch_customers": args.batch_customers, "runs": runs, **verdict}, args.json)
    print_table(("records", "customers", "1st run s", "stop s", "stopped with", "snapshot MiB", "checkpoint MiB",
                 "to submitted s", "to RUNNING s", "to tasks s", "to caught up s"), rows)
    print(f"{verdict['verdict']}: {small['records']:,} → {large['records']:,} records, "
          f"restart to caught up x{grows}, to RUNNING x{verdict.get('restart_to_running_ratio')} "
          f"(threshold x{args.max_ratio})")


if __name__ == "__main__":
    main()
