"""The backfill on FnApiRunner and on Flink, on the same events: time, memory, and the same tables. A benchmark, not
a test:

    .venv/bin/python deploy/bench/backfill_engines.py --events 30000 [--json FILE]

1. `journeys generate` produces about --events records once (customers = events / 10 over 60 days, 1 % malformed)
   to fresh topics of the local broker (or --topic-prefix reuses topics produced before);
2. `journeys backfill --runner R` for each runner of --runners, each into its own DuckDB file, each in its own
   process: wall time, events/s and the launcher's peak RSS (os.wait4). On FnApiRunner the launcher is the whole
   pipeline. On Flink it only submits the job: the work runs in the cluster of `journeys flink up` (its TaskManager
   JVM and the SDK worker processes of its worker pool), so their RSS is sampled from /proc every --sample-s while
   the backfill runs: the peak of each, and of TaskManager + worker pool tree together (JobManager and job server
   are reported too; the JVMs' RSS before the run is their baseline: heap reserved by earlier work stays);
3. the row count of every table in each published copy, side by side: both runs computed the same thing when every
   table but dq_results (which names its runs) has the same count.

Uses the Flink cluster of $JOURNEYS_FLINK_PORT / $JOURNEYS_LOCAL_DIR, as `journeys backfill` does.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from flink_restart import cluster, ensure_pseudonym_key, print_table, records_in_topics
from report import report

REPO = Path(__file__).resolve().parents[2]
JOURNEYS = [sys.executable, "-m", "pipelines.cli"]
EVENTS_PER_CUSTOMER = 10  # over 60 simulated days: 9.8-9.9 measured at 1,000 and 3,000 customers (throughput.py)
NONZERO_DAY = "(abs(conversions) > 1e-9 or revenue <> 0)"
VOLATILE = {"dq_results"}  # one row per expectation and run: the runs' ids and timings differ
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def rss_kib(pid: int) -> int:
    """Resident set of one process (0 once it is gone): /proc/<pid>/statm's second field, in pages."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_KIB
    except (OSError, IndexError, ValueError):
        return 0


def children() -> dict[int, list[int]]:
    """Parent pid → its children, from /proc/<pid>/stat (the field after the parenthesised command name)."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int, tree: dict[int, list[int]]) -> list[int]:
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(tree.get(found[-1], ()))
    return found


class ClusterSampler(threading.Thread):
    """Samples the RSS of the Flink cluster's processes: the pids in its pid files (flink.sh), the worker pool with
    the SDK workers it starts (its children)."""

    PARTS = ("taskmanager", "workers", "jobmanager", "jobserver")

    def __init__(self, every_s: float):
        super().__init__(daemon=True)
        state = cluster().state
        self.pids = {part: int((state / f"{part}.pid").read_text()) for part in self.PARTS
                     if (state / f"{part}.pid").exists()}
        self.every_s = every_s
        self.stopped = threading.Event()
        self.workers_seen: set[int] = set()
        self.baseline = self.sample()
        self.peak = dict(self.baseline)
        self.workers_before = set(self.workers_seen)  # SDK workers of jobs that ran before (a stream, say)

    def sample(self) -> dict[str, int]:
        tree = children()
        kib = {part: rss_kib(pid) for part, pid in self.pids.items() if part != "workers"}
        if "workers" in self.pids:
            tree_pids = descendants(self.pids["workers"], tree)
            kib["workers"] = sum(rss_kib(pid) for pid in tree_pids)
            self.workers_seen.update(tree_pids[1:])
        kib["taskmanager+workers"] = kib.get("taskmanager", 0) + kib.get("workers", 0)
        return kib

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            for part, kib in self.sample().items():
                self.peak[part] = max(self.peak.get(part, 0), kib)

    def result(self) -> dict:
        self.stopped.set()
        self.join()
        return {"baseline_mib": {p: round(k / 1024) for p, k in self.baseline.items()},
                "peak_mib": {p: round(k / 1024) for p, k in self.peak.items()},
                "sdk_workers_started": len(self.workers_seen - self.workers_before)}


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and its descendants: FnApiRunner's worker processes count with it."""

    def __init__(self, pid: int, every_s: float):
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.stopped = threading.Event()
        self.peak_kib = 0
        self.processes = 0

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            pids = descendants(self.pid, children())
            self.processes = max(self.processes, len(pids))
            self.peak_kib = max(self.peak_kib, sum(rss_kib(pid) for pid in pids))

    def result(self) -> dict:
        self.stopped.set()
        self.join()
        return {"peak_mib": round(self.peak_kib / 1024), "processes": self.processes}


def run_backfill(runner: str, prefix: str, work: Path, extra: list[str], sample_s: float) -> dict:
    warehouse = work / f"{runner}.duckdb"
    log = work / f"{runner}.log"
    command = [*JOURNEYS, "backfill", "--runner", runner, "--topic-prefix", prefix, "--warehouse", str(warehouse),
               # the generated days lie in the past: the freshness expectation would only warn about their age
               "--max-event-age-hours", "87600", *extra]
    sampler = ClusterSampler(sample_s) if runner == "FlinkRunner" else None
    ensure_pseudonym_key()
    started = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        tree = TreeSampler(process.pid, sample_s)
        tree.start()
        if sampler:
            sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    result = {"seconds": round(seconds, 2), "exit_code": os.waitstatus_to_exitcode(status),
              "launcher_peak_rss_mib": round(usage.ru_maxrss / 1024), "log": str(log)}
    # the launcher and what it started, summed (FnApiRunner's worker processes; a Flink job's launcher alone)
    result["launcher_tree"] = tree.result()
    if sampler:
        result["cluster"] = sampler.result()
    published = warehouse.with_suffix(".published.duckdb")
    if result["exit_code"] not in (0, 2) or not published.exists():  # 2: landed, but a block expectation failed
        sys.exit(f"{' '.join(command)} failed ({result['exit_code']}); see {log}")
    result["rows"] = row_counts(published)
    return result


def row_counts(published: Path) -> dict[str, int]:
    import duckdb

    with duckdb.connect(str(published), read_only=True) as con:
        tables = [t for (t,) in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]
        rows = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        if "channel_attribution_daily" in rows:
            # a daily total that a correction or a full reversal took to nothing: absent, as the tests count it
            rows["channel_attribution_daily (nonzero)"] = con.execute(
                f"SELECT count(*) FROM channel_attribution_daily WHERE {NONZERO_DAY}").fetchone()[0]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000, help="about this many records (default: %(default)s)")
    parser.add_argument("--days", type=float, default=60)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--malformed", type=float, default=0.01)
    parser.add_argument("--runners", default="FnApiRunner,FlinkRunner", help="comma-separated (default: %(default)s)")
    parser.add_argument("--flink-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for the Flink backfill (repeatable), e.g. --flink-arg=--parallelism=1")
    parser.add_argument("--sample-s", type=float, default=0.5, help="how often the cluster's RSS is sampled")
    parser.add_argument("--topic-prefix", help="reuse topics generated before (skips generation)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    runners = args.runners.split(",")
    if "FlinkRunner" in runners and not cluster().running():
        raise SystemExit("the Flink cluster is not running: journeys flink up (with the same JOURNEYS_FLINK_PORT)")

    work = Path(tempfile.mkdtemp(prefix="backfill-engines-"))
    result = {"benchmark": "backfill_engines", "events_requested": args.events, "work_dir": str(work)}
    prefix = args.topic_prefix
    if prefix is None:
        prefix = f"engines{int(time.time())}_"
        customers = max(1, args.events // EVENTS_PER_CUSTOMER)
        started = time.monotonic()
        subprocess.run([*JOURNEYS, "generate", "--customers", str(customers), "--days", str(args.days), "--seed",
                        str(args.seed), "--topic-prefix", prefix, "--malformed", str(args.malformed)],
                       stdout=open(work / "generate.log", "w"), stderr=subprocess.STDOUT, check=True, cwd=REPO)
        result["generate"] = {"customers": customers, "seconds": round(time.monotonic() - started, 2)}
    records = result["records"] = records_in_topics(prefix)
    result["topic_prefix"] = prefix
    print(f"{records:,} records in topics {prefix}*; logs in {work}", file=sys.stderr)

    runs = result["runs"] = {}
    for runner in runners:
        print(f"backfill on {runner} ...", file=sys.stderr)
        runs[runner] = run_backfill(runner, prefix, work, args.flink_arg if runner == "FlinkRunner" else [],
                                    args.sample_s)
        runs[runner]["events_per_s"] = round(records / runs[runner]["seconds"], 1)
    first, *others = runners
    tables = sorted(set().union(*(r["rows"] for r in runs.values())))
    result["same_row_counts"] = all(len({runs[r]["rows"].get(t) for r in runners}) == 1
                                    for t in tables if t not in VOLATILE)
    for other in others:  # > 1: the other engine is faster
        result[f"speed_{other}_to_{first}"] = round(runs[other]["events_per_s"] / runs[first]["events_per_s"], 3)
    report(result, args.json)

    print_table(("runner", "seconds", "events/s", "launcher peak MiB", "TM+workers peak MiB", "TM peak MiB",
                 "workers peak MiB", "exit"),
                [(r, runs[r]["seconds"], runs[r]["events_per_s"], runs[r]["launcher_peak_rss_mib"],
                  *((runs[r]["cluster"]["peak_mib"].get(p) for p in ("taskmanager+workers", "taskmanager", "workers"))
                    if "cluster" in runs[r] else (None, None, None)), runs[r]["exit_code"]) for r in runners])
    print()
    print_table(("table", *runners, "same"),
                [(t, *(runs[r]["rows"].get(t) for r in runners),
                  "(volatile)" if t in VOLATILE else "yes" if len({runs[r]["rows"].get(t) for r in runners}) == 1
                  else "NO") for t in tables])
    for other in others:
        print(f"\n{other} / {first}: {result[f'speed_{other}_to_{first}']} (events/s ratio); "
              f"same row counts: {'yes' if result['same_row_counts'] else 'NO'}")


if __name__ == "__main__":
    main()
