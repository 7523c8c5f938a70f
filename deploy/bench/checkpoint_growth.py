"""Does a stream's checkpointed state on Flink stay bounded while its topics are quiet? A benchmark, not a test:

    .venv/bin/python deploy/bench/checkpoint_growth.py --minutes 10 [--rate 50 --busy-s 30 --quiet-s 60] [--json FILE]

apache/beam#27648: on Beam 2.62's portable Flink runner a splittable DoFn that polls with defer_remainder kept every
deferred residual in keyed state, so its checkpoints grew without bound; our job server is built with that patched
(deploy/flink/patch_beam.py). Our Kafka source defers while a partition has nothing new, and so does the
writer's ticker (PeriodicImpulse). This starts `journeys stream` (FlinkRunner, the
cluster of `journeys flink up`) on fresh topics and alternates busy spells (records produced at --rate for
--busy-s) with quiet spells (nothing for --quiet-s) for --minutes, ending with a quiet one. Every completed
checkpoint is read from Flink's REST API (/jobs/<jid>/checkpoints, and /checkpoints/details/<id> for each vertex):
id, trigger time, state_size (the whole state; with RocksDB's incremental checkpoints the SST files it references)
and checkpointed_size (what that checkpoint wrote).

Busy spells add customers, so state may rightly grow across them; a quiet spell adds nothing. Per quiet spell: the
size once the spell settled (first checkpoint --settle-s into it) and at its end, so growth while nothing arrives is
seen apart from growth with data; per vertex too, which names the operator that grows. Verdict "growing" when the
state grew during every quiet spell and each quiet spell ended larger than the one before, else "bounded". The job
is stopped with a savepoint at the end (its size is reported), then its checkpoints and savepoints are deleted unless
--keep-state.
"""
from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from flink_restart import (RECORDS_PER_CUSTOMER_30_DAYS, cancel_jobs, cluster, flink_job, folder_bytes, mib,
                           print_table, rest, start_stream, stop_stream, stream_job_name, tasks_running, wait_until)
from report import report

from pipelines.generate import GeneratorConfig, generate
from pipelines.generate.sinks import produce
from pipelines.kafka_topics import ensure_topics
from transforms.kafka_connection import KafkaConnection


class CheckpointSampler(threading.Thread):
    """Every completed checkpoint of a job, with its size per vertex. Flink's REST API lists only the last few
    (web.checkpoints.history, 10 by default: 100 s at one every 10 s), so it is polled every few seconds."""

    def __init__(self, job_id: str, every_s: float):
        super().__init__(daemon=True)
        self.job_id = job_id
        self.every_s = every_s
        self.stopped = threading.Event()
        self.vertices = {v["id"]: v["name"] for v in rest(f"/jobs/{job_id}")["vertices"]}
        self.completed: dict[int, dict] = {}
        self.failed: set[int] = set()
        self.errors = 0

    def run(self) -> None:
        while not self.stopped.is_set():
            self.poll()
            self.stopped.wait(self.every_s)
        self.poll()

    def poll(self) -> None:
        try:
            history = rest(f"/jobs/{self.job_id}/checkpoints")["history"]
            for entry in history:
                if entry["status"] == "FAILED":
                    self.failed.add(entry["id"])
                if entry["status"] != "COMPLETED" or entry["id"] in self.completed or entry.get("is_savepoint"):
                    continue
                details = rest(f"/jobs/{self.job_id}/checkpoints/details/{entry['id']}")
                self.completed[entry["id"]] = {
                    "id": entry["id"], "trigger": entry["trigger_timestamp"] / 1000,
                    "state_size": entry["state_size"], "checkpointed_size": entry["checkpointed_size"],
                    "duration_s": entry["end_to_end_duration"] / 1000,
                    "vertices": {self.vertices.get(v, v): task["state_size"]
                                 for v, task in details.get("tasks", {}).items()}}
        except OSError:
            self.errors += 1  # one missed poll: the next one lists the checkpoint still

    def result(self) -> list[dict]:
        self.stopped.set()
        self.join()
        return [self.completed[i] for i in sorted(self.completed)]


def spell_of(when: float, spells: list[dict]) -> str:
    return next((f"{s['kind']} {s['n']}" for s in spells if s["start"] <= when < s["end"]), "-")


def analyse(checkpoints: list[dict], spells: list[dict], settle_s: float) -> dict:
    """Size at the settled start and at the end of each quiet spell, overall and per vertex; the verdict."""
    quiet = []
    for spell in (s for s in spells if s["kind"] == "quiet"):
        inside = [c for c in checkpoints if spell["start"] + settle_s <= c["trigger"] <= spell["end"]]
        if len(inside) < 2:
            continue
        first, last = inside[0], inside[-1]
        minutes = (last["trigger"] - first["trigger"]) / 60
        quiet.append({"spell": spell["n"], "start_checkpoint": first["id"], "end_checkpoint": last["id"],
                      "state_mib_settled": mib(first["state_size"]), "state_mib_end": mib(last["state_size"]),
                      "growth_kib_per_min": round((last["state_size"] - first["state_size"]) / 1024 / minutes, 1)
                      if minutes > 0 else None,
                      "end_size": last["state_size"], "first": first, "last": last})
    for before, after in zip(quiet, quiet[1:]):
        after["vs_previous_quiet_end_mib"] = mib(after["end_size"] - before["end_size"])
    # per vertex: how much it grew inside the quiet spells, summed; the operators that grow are named by it
    vertices = sorted({v for c in checkpoints for v in c["vertices"]})
    growth = {v: sum(q["last"]["vertices"].get(v, 0) - q["first"]["vertices"].get(v, 0) for q in quiet)
              for v in vertices}
    growing_vertices = {v: round(g / 1024, 1) for v, g in sorted(growth.items(), key=lambda kv: -kv[1]) if g > 0}
    grew_in_every_quiet = bool(quiet) and all(q["last"]["state_size"] > q["first"]["state_size"] for q in quiet)
    ends_rising = len(quiet) >= 2 and all(b["end_size"] > a["end_size"] for a, b in zip(quiet, quiet[1:]))
    slope = None
    if len(quiet) >= 2:  # MiB per hour, fitted over the quiet spells' end sizes
        fit = statistics.linear_regression([q["last"]["trigger"] / 3600 for q in quiet],
                                           [q["end_size"] / 2**20 for q in quiet])
        slope = round(fit.slope, 2)
    rates = [q["growth_kib_per_min"] for q in quiet if q["growth_kib_per_min"] is not None]
    verdict = ("unmeasured: fewer than two quiet spells with two checkpoints each" if len(quiet) < 2 else
               "growing" if grew_in_every_quiet and ends_rising else "bounded")
    for q in quiet:
        for key in ("end_size", "first", "last"):
            q.pop(key)
    return {"quiet_spells": quiet, "quiet_end_fit_mib_per_hour": slope,
            "quiet_growth_kib_per_min_mean": round(statistics.mean(rates), 1) if rates else None,
            "grew_in_every_quiet_spell": grew_in_every_quiet, "quiet_ends_rising": ends_rising,
            "vertices_growing_while_quiet_kib": growing_vertices, "verdict": verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10, help="how long to alternate spells (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=50, help="records per second in a busy spell")
    parser.add_argument("--busy-s", type=float, default=30)
    parser.add_argument("--quiet-s", type=float, default=60)
    parser.add_argument("--settle-s", type=float, default=20,
                        help="a quiet spell's size is taken from its first checkpoint this far into it: the busy "
                             "spell's records have been processed by then (default: %(default)s)")
    parser.add_argument("--sample-s", type=float, default=3, help="how often Flink's REST API is polled")
    parser.add_argument("--commit-every-s", type=float, default=2.0)
    parser.add_argument("--stream-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for `journeys stream` (repeatable), e.g. "
                             "--stream-arg=--checkpointing_interval=5000")
    parser.add_argument("--keep-state", action="store_true", help="keep the job's checkpoints and savepoints")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    if not cluster().running():
        raise SystemExit("the Flink cluster is not running: journeys flink up (with the same JOURNEYS_FLINK_PORT)")

    cycles = max(1, math.ceil(args.minutes * 60 / (args.busy_s + args.quiet_s)))
    per_spell = int(args.rate * args.busy_s)
    # a quarter more customers than the average needs: a world a little short would cut the last busy spell short
    customers = int(per_spell * cycles / RECORDS_PER_CUSTOMER_30_DAYS * 1.25) + 1
    records = generate(GeneratorConfig(customers=customers, days=30, seed=11), b"bench")[:per_spell * cycles]
    connection = KafkaConnection.from_env()
    prefix = f"growth{uuid.uuid4().hex[:8]}_"
    ensure_topics(connection, prefix=prefix)
    work = Path(tempfile.mkdtemp(prefix="checkpoint-growth-"))
    log = work / "stream.log"
    stream_args = ["--runner", "FlinkRunner", "--topic-prefix", prefix, "--warehouse", str(work / "journeys.duckdb"),
                   "--commit-every-s", str(args.commit_every_s), "--log-every-s", "30", *args.stream_arg]
    name = stream_job_name(stream_args)
    print(f"topics {prefix}*, job {name}, log {log}", file=sys.stderr)

    launched = time.time()
    job = start_stream(stream_args, log)
    spells: list[dict] = []
    sampler = None
    try:
        flink = wait_until(lambda: (j := flink_job(name, since=launched - 1)) and tasks_running(j["jid"]) and j, 300)
        if not flink or job.poll() is not None:
            raise SystemExit(f"the Flink job {name} did not start within 300 s; see {log}")
        sampler = CheckpointSampler(flink["jid"], args.sample_s)
        sampler.start()
        t0 = time.time()
        for n in range(cycles):
            chunk = records[n * per_spell:(n + 1) * per_spell]
            start = time.time()
            produce(chunk, connection, topic_prefix=prefix, rate=args.rate)
            spells.append({"kind": "busy", "n": n + 1, "start": start, "end": time.time(), "records": len(chunk)})
            start = time.time()
            time.sleep(args.quiet_s)
            spells.append({"kind": "quiet", "n": n + 1, "start": start, "end": time.time(), "records": 0})
            print(f"cycle {n + 1}/{cycles} done at {time.time() - t0:.0f} s", file=sys.stderr)
        # the last spell's final checkpoint may still be completing: wait for one triggered after the spell
        wait_until(lambda: any(c["trigger"] > spells[-1]["end"] for c in list(sampler.completed.values())), 60)
    finally:
        checkpoints = sampler.result() if sampler else []
        stop_s = stop_stream(job)
        left = cancel_jobs(name)
    savepoints = cluster().state / "savepoints" / name
    savepoint_mib = mib(folder_bytes(savepoints))
    if not args.keep_state:
        shutil.rmtree(cluster().state / "checkpoints" / name, ignore_errors=True)
        shutil.rmtree(savepoints, ignore_errors=True)

    analysis = analyse(checkpoints, spells, args.settle_s)
    series = [{"id": c["id"], "t_s": round(c["trigger"] - t0, 1), "phase": spell_of(c["trigger"], spells),
               "state_mib": mib(c["state_size"]), "checkpointed_mib": mib(c["checkpointed_size"]),
               "duration_s": c["duration_s"], "vertices_kib": {v: round(s / 1024, 1) for v, s in c["vertices"].items()}}
              for c in checkpoints]
    report({"benchmark": "checkpoint_growth", "flink": cluster().rest, "job_name": name, "topic_prefix": prefix,
            "rate": args.rate, "busy_s": args.busy_s, "quiet_s": args.quiet_s, "cycles": cycles,
            "records": sum(s["records"] for s in spells),
            "failed_checkpoints": sorted(sampler.failed) if sampler else [],
            "stop_with_savepoint_s": stop_s, "savepoint_mib": savepoint_mib, "left_running_cancelled": left,
            "spells": [{**s, "start": round(s["start"] - t0, 1), "end": round(s["end"] - t0, 1)} for s in spells],
            **analysis, "checkpoints": series, "log": str(log)}, args.json)

    top = list(analysis["vertices_growing_while_quiet_kib"])[:2]
    print_table(("checkpoint", "t s", "phase", "state MiB", "checkpointed MiB",
                 *(f"{v[:40]} MiB" for v in top)),
                [(s["id"], s["t_s"], s["phase"], s["state_mib"], s["checkpointed_mib"],
                  *(mib(c["vertices"].get(v, 0)) for v in top)) for s, c in zip(series, checkpoints)])
    print()
    print_table(("quiet spell", "settled MiB", "end MiB", "KiB/min while quiet", "end vs previous end MiB"),
                [(q["spell"], q["state_mib_settled"], q["state_mib_end"], q["growth_kib_per_min"],
                  q.get("vs_previous_quiet_end_mib")) for q in analysis["quiet_spells"]])
    print(f"\n{analysis['verdict']}: quiet-spell ends fit {analysis['quiet_end_fit_mib_per_hour']} MiB/hour; "
          f"growth while quiet {analysis['quiet_growth_kib_per_min_mean']} KiB/min on average; savepoint at the "
          f"end {savepoint_mib} MiB; growing while quiet: "
          + (", ".join(f"{v} (+{k} KiB)" for v, k in list(analysis["vertices_growing_while_quiet_kib"].items())[:4])
             or "none"))


if __name__ == "__main__":
    main()
