"""Which stage of a Flink job holds the memory: every few seconds, the RSS of the local cluster's TaskManager and of
each process of its SDK worker pool, beside the job's vertices then RUNNING. A benchmark aid, not a test.

    python deploy/bench/flink_rss_timeline.py --every-s 5 > timeline.txt &
    journeys backfill --runner FlinkRunner ...
    python deploy/bench/flink_rss_timeline.py --peaks timeline.txt

Each line: time, TaskManager MiB, {pid: MiB} of the worker pool and its SDK workers, the running vertices. `--peaks`
prints the whole cluster's peak (TaskManager and pool together) and the peak while each set of vertices ran.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.request

from backfill_engines import ClusterSampler, children, descendants, rss_kib

LINE = re.compile(r"(\S+) TM (\d+) workers \{(.*?)\} \| (.*)")


def running_vertices(ui: str) -> list[str]:
    try:
        jobs = json.load(urllib.request.urlopen(f"{ui}/jobs", timeout=2))["jobs"]
        names = []
        for job in (j for j in jobs if j["status"] == "RUNNING"):
            detail = json.load(urllib.request.urlopen(f"{ui}/jobs/{job['id']}", timeout=2))
            names += [v["name"][:60] for v in detail["vertices"] if v["status"] == "RUNNING"]
        return names
    except OSError as error:
        return [f"(no answer: {error})"[:60]]


def sample_forever(every_s: float, ui: str) -> None:
    pids = ClusterSampler(every_s).pids
    while True:
        pool = descendants(pids["workers"], children())
        workers = {pid: rss_kib(pid) // 1024 for pid in pool}
        print(time.strftime("%H:%M:%S"), "TM", rss_kib(pids["taskmanager"]) // 1024, "workers", workers,
              "| " + " / ".join(running_vertices(ui)), flush=True)
        time.sleep(every_s)


def peaks(path: str) -> None:
    whole, by_stage = (0, ""), {}
    for line in open(path):
        found = LINE.match(line)
        if not found:
            continue
        when, taskmanager, workers, stage = found.groups()
        pool = [int(part.split(":")[1]) for part in workers.split(",") if ":" in part]
        total = int(taskmanager) + sum(pool)
        if total > whole[0]:
            whole = (total, line.strip()[:160])
        if total > by_stage.get(stage[:70], (0,))[0]:
            by_stage[stage[:70]] = (total, when, int(taskmanager), pool)
    print(f"peak {whole[0]} MiB: {whole[1]}")
    for stage, (total, when, taskmanager, pool) in by_stage.items():
        print(f"{total:6d} MiB at {when} (TaskManager {taskmanager}, pool {pool})  {stage}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every-s", type=float, default=5)
    parser.add_argument("--ui", default="http://localhost:18081", help="the Flink web UI")
    parser.add_argument("--peaks", metavar="TIMELINE", help="summarise a timeline written before")
    args = parser.parse_args()
    if args.peaks:
        peaks(args.peaks)
    else:
        sample_forever(args.every_s, args.ui)


if __name__ == "__main__":
    sys.exit(main())
