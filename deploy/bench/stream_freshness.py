"""Streaming freshness: how long after a record is produced its row is visible to a BI reader. A benchmark, not a test:

    .venv/bin/python deploy/bench/stream_freshness.py --rate 20 --customers 300 --days 30 [--runner R] [--json FILE]
    .venv/bin/python deploy/bench/stream_freshness.py --rate 2000 --duration-s 60 [--runner R] [--json FILE]
    .venv/bin/python deploy/bench/stream_freshness.py --rate 2000 --duration-s 60 --sdk_worker_parallelism=1

With --duration-s it sends for that long at the rate (customers sized to fill it) and reports whether the job kept
up (every record committed within 20 s of the last send), the backlog when sending ended, and how long the job
then took to commit every record (null: not within --settle-s).

Starts `journeys stream` (--runner FlinkRunner, the default: the cluster of `journeys flink up`; or PrismRunner;
options this script does not know are passed to it) into
DuckDB on fresh topics of the local broker, produces a generated world at a fixed rate, and polls the published
warehouse copy for touchpoints as a BI tool would. Freshness of a touch = when its row first shows in the published
copy − when its record was due to be sent (the producer paces sends; one running behind only makes the figure
larger). Touches of visitors still anonymous wait for a login or their deadline in event time by design (identity
stitching), so the percentiles are given for the touches that appeared.

Rates while sending: committed = the published copy's sum of stored offsets; read = the job's own consumer group's
committed offsets (the source commits them as the runner finalizes its bundles: on Flink at each checkpoint, every
10 s), so a read rate well above the commit rate locates a backlog after the source. Sending starts once the job
runs: on Flink when every task is RUNNING (REST), on Prism after a fixed 20 s. The job is stopped with SIGTERM (on
Flink: a savepoint) and the launcher waited for. On Flink the job's log does not reach the launcher's: its SDK
workers run under the cluster's worker pool, which starts them without a log handler, so only their warnings, errors
and prints land in <JOURNEYS_LOCAL_DIR>/flink/logs/workers.log (every job's together) and their INFO lines (commits,
progress) nowhere; the figures here come from the published copy and the consumer group, not from logs.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import duckdb
from flink_restart import (cancel_jobs, cluster, ensure_pseudonym_key, flink_job, stop_stream, stream_job_name,
                           tasks_running, wait_until)
from report import report

from pipelines.generate import GeneratorConfig, generate
from pipelines.generate.sinks import produce
from pipelines.kafka_topics import ensure_topics
from transforms.kafka_connection import KafkaConnection


def touch_id(record) -> str | None:
    if record.event is None or record.topic == "orders":  # orders are not touches
        return None
    return record.event.get("session_id") if record.topic == "web_sessions" else record.event.get("event_id")


def names_its_customer(record) -> bool:
    """A touch whose own record names the customer (a logged-in session, a known user's interaction): its row can
    show at once. An anonymous visitor's touch waits, by design, for a login or its deadline in event time."""
    return bool(record.event and record.event.get("customer_id"))


def percentiles(delays: list[float]) -> dict | None:
    if not delays:
        return None
    delays = sorted(delays)
    return {"p50": round(percentile(delays, 50), 2), "p95": round(percentile(delays, 95), 2),
            "p99": round(percentile(delays, 99), 2), "max": round(delays[-1], 2), "touches": len(delays)}


EVENTS_PER_CUSTOMER_30_DAYS = 5
KEPT_UP_WITHIN_S = 20.0  # every record committed this soon after sending ended


def poll(published: Path, seen: dict, committed: list, stop: threading.Event, every_s: float = 0.5) -> None:
    while not stop.is_set():
        if published.exists():
            try:
                with duckdb.connect(str(published), read_only=True) as con:
                    ids = con.execute("SELECT touch_id FROM touchpoints").fetchall()
                    offsets = con.execute("SELECT coalesce(sum(next_offset), 0) FROM source_offsets").fetchone()[0]
                now = time.time()
                committed.append((now, offsets))
                for (tid,) in ids:
                    seen.setdefault(tid, now)
            except duckdb.Error:
                pass  # swapped while opening: the next poll reads the new copy
        stop.wait(every_s)


def poll_status(status: Path, commits: dict, stop: threading.Event, every_s: float = 0.25) -> None:
    """The writer's status file (transforms/warehouse.py write_status): each commit's step times, by commit."""
    while not stop.is_set():
        try:
            last = json.loads(status.read_text())
            commits.setdefault(last["committed_at"], last)
        except (OSError, ValueError, KeyError):
            pass  # not written yet
        stop.wait(every_s)


def commit_steps(commits: dict) -> dict | None:
    """Median and p95 of each step of the commits seen (a commit shorter than the polling interval may be missed)."""
    took = [c["took_s"] for c in commits.values() if "took_s" in c]
    if not took:
        return None
    steps = {step: sorted(t[step] for t in took if step in t) for step in took[-1]}
    at = sorted(dt.datetime.fromisoformat(when).timestamp() for when in commits)
    between = sorted(b - a for a, b in zip(at, at[1:]))
    return {"commits_seen": len(took), "rows_p50": statistics.median(c.get("rows", 0) for c in commits.values()),
            "between_s": ({"p50": round(statistics.median(between), 2), "max": round(between[-1], 2)}
                          if between else None),
            **{step: {"p50": round(statistics.median(v), 2), "p95": round(percentile(v, 95), 2)}
               for step, v in steps.items() if v}}


def poll_group(group: str, prefix: str, read: list, stop: threading.Event, every_s: float = 1.0) -> None:
    """(when, records) the job's consumer group has committed on our topics: how far its source has read."""
    from kafka.errors import KafkaError

    from pipelines.kafka_topics import admin_client

    admin = admin_client(KafkaConnection.from_env())
    try:
        while not stop.is_set():
            try:
                offsets = admin.list_group_offsets([group]).get(group, {})
            except KafkaError:  # the group does not exist before the source's first commit
                offsets = {}
            read.append((time.time(), sum(o.offset for tp, o in offsets.items()
                                          if tp.topic.startswith(prefix) and o.offset >= 0)))
            stop.wait(every_s)
    finally:
        admin.close()


def rate_in(samples: list, start: float, end: float) -> float | None:
    """Records per second inside [start, end] from (when, count) samples. The counts move in steps (a publish, a
    finalized bundle: on Flink a checkpoint every 10 s), so the rate is taken between the first and last step inside
    the window, not between arbitrary samples on the flat parts; without two steps, between the window's samples."""
    inside = [(when, n) for when, n in samples if start <= when <= end]
    steps = [(when, n) for (when, n), (_, before) in zip(inside[1:], inside) if n != before]
    ends = steps if len(steps) >= 2 else inside
    if len(ends) < 2 or ends[-1][0] <= ends[0][0]:
        return None
    return (ends[-1][1] - ends[0][1]) / (ends[-1][0] - ends[0][0])


def by_send_time(delays: dict, sent_at: dict, started: float, every_s: float = 10) -> list:
    """[[seconds from the first send, p50, max] of the delays of the touches sent in each `every_s`]."""
    buckets: dict[int, list] = {}
    for touch, delay in delays.items():
        buckets.setdefault(int((sent_at[touch] - started) // every_s), []).append(delay)
    return [[int(bucket * every_s), round(statistics.median(d), 1), round(max(d), 1)]
            for bucket, d in sorted(buckets.items())]


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="records per second")
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--commit-every-s", default="2")
    parser.add_argument("--duration-s", type=float, help="send for this long (sizes the customers to fill it)")
    parser.add_argument("--settle-s", type=float, default=90, help="wait this long after the last send")
    parser.add_argument("--runner", choices=("FlinkRunner", "PrismRunner"), default="FlinkRunner",
                        help="the stream's runner (default: %(default)s)")
    parser.add_argument("--start-timeout-s", type=float, default=300,
                        help="Flink: longest wait for the job's tasks to run before sending")
    parser.add_argument("--json", metavar="FILE")
    args, beam_args = parser.parse_known_args()  # the rest goes to the stream: Beam's options, say

    connection = KafkaConnection.from_env()
    prefix = f"fresh{uuid.uuid4().hex[:8]}_"
    group = f"bench-{prefix.rstrip('_')}"  # this job's own consumer group: its committed offsets are its reads
    ensure_topics(connection, prefix=prefix)
    customers = args.customers
    if args.duration_s:
        customers = int(args.rate * args.duration_s / EVENTS_PER_CUSTOMER_30_DAYS * 30 / args.days) + 1
    records = generate(GeneratorConfig(customers=customers, days=args.days, seed=11), b"bench")
    if args.duration_s:
        records = records[:int(args.rate * args.duration_s)]
    work = Path(tempfile.mkdtemp(prefix="freshness"))
    warehouse = work / "journeys.duckdb"
    stream_args = ["--runner", args.runner, "--topic-prefix", prefix, "--warehouse", str(warehouse),
                   "--commit-every-s", args.commit_every_s, "--update-every-s", "30", "--log-every-s", "10",
                   "--group-id", group, *beam_args]
    flink = args.runner == "FlinkRunner"
    name = stream_job_name(stream_args) if flink else None
    ensure_pseudonym_key()
    launched = time.time()
    job = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "stream", *stream_args],
                           stdout=open(work / "stream.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                           env=os.environ)
    seen: dict = {}
    committed: list = []  # (when, records committed)
    read: list = []  # (when, records the source has read and finalized)
    commits: dict = {}  # the writer's status at each commit, by when it committed
    stop = threading.Event()
    pollers = [threading.Thread(target=poll, args=(warehouse.with_suffix(".published.duckdb"), seen, committed, stop)),
               threading.Thread(target=poll_group, args=(group, prefix, read, stop)),
               threading.Thread(target=poll_status, args=(warehouse.with_suffix(".status.json"), commits, stop))]
    for poller in pollers:
        poller.start()
    stop_s = None
    try:
        if flink:  # sending starts once every task runs (operators open, SDK workers connected)
            ready = wait_until(lambda: (j := flink_job(name, since=launched - 1)) and tasks_running(j["jid"]),
                               args.start_timeout_s)
            if not ready or job.poll() is not None:
                raise SystemExit(f"the Flink job {name} did not start within {args.start_timeout_s} s; see "
                                 f"{work / 'stream.log'}")
            time.sleep(5)  # the source's first poll of the topics
        else:
            time.sleep(20)  # the job starts its runner and reaches the topics
        started = time.time()
        sent_at = {tid: started + i / args.rate for i, r in enumerate(records) if (tid := touch_id(r))}
        identified = {tid for r in records if (tid := touch_id(r)) and names_its_customer(r)}
        stats = produce(records, connection, topic_prefix=prefix, rate=args.rate)
        sent_end = time.time()
        deadline = sent_end + args.settle_s
        while time.time() < deadline and not (committed and committed[-1][1] >= len(records)):
            time.sleep(1)
    finally:
        stop.set()
        for poller in pollers:
            poller.join()
        stop_s = stop_stream(job)  # SIGTERM; on Flink the launcher stops the job with a savepoint
        if flink:
            cancel_jobs(name)  # only if the launcher could not stop it: the cluster's slots are few
    delays = sorted(seen[t] - sent_at[t] for t in seen if t in sent_at)
    at_send_end = max((n for when, n in committed if when <= sent_end), default=0)
    caught_up = next((when - sent_end for when, n in committed if n >= len(records)), None)
    commit_rate = rate_in(committed, started, sent_end)
    read_rate = rate_in(read, started, sent_end)
    sent_rate = stats.records / stats.seconds
    # a commit shows as the published offsets changing: the intervals between them are the commit cadence
    changes = [when for (when, n), (_, before) in zip(committed[1:], committed) if n != before]
    result = {"benchmark": "stream_freshness", "runner": args.runner, "rate_target": args.rate,
              "rate_sent": round(sent_rate, 1), "records": stats.records,
              "touches_sent": len(sent_at), "touches_visible": len(delays),
              "committed_when_sending_ended": at_send_end, "backlog_when_sending_ended": len(records) - at_send_end,
              "read_per_s_while_sending": round(read_rate, 1) if read_rate is not None else None,
              "committed_per_s_while_sending": round(commit_rate, 1) if commit_rate is not None else None,
              "all_committed_s_after_sending": round(caught_up, 1) if caught_up is not None else None,
              # kept up: what was still uncommitted when sending ended landed within a few commits. The commit rate
              # while sending is not enough: commits land in steps, and a burst after a stall reads as a fast rate.
              "kept_up": caught_up is not None and caught_up <= KEPT_UP_WITHIN_S,
              "freshness_s": percentiles(delays),
              # the touches whose rows can show at once: what the job's own latency is
              "freshness_s_identified": percentiles([seen[t] - sent_at[t] for t in seen if t in identified]),
              "touches_identified_sent": len(identified),
              # when the slow ones were sent: a tail from periodic work (table updates, checkpoints) shows as peaks
              "identified_by_10s_sent": by_send_time(
                  {t: seen[t] - sent_at[t] for t in seen if t in identified}, sent_at, started),
              "publish_interval_s_p50": round(statistics.median(b - a for a, b in zip(changes, changes[1:])), 1)
              if len(changes) > 2 else None,
              "commit_steps_s": commit_steps(commits),
              # from the first send until every record was committed: the rate the job sustained over the run
              "committed_per_s_overall": round(len(records) / (sent_end + caught_up - started), 1)
              if caught_up is not None else None,
              "stream_options": beam_args, "stop_s": stop_s, "log": str(work / "stream.log")}
    if flink:
        result.update(flink=cluster().rest, job_name=name, job_log=str(cluster().state / "logs" / "workers.log"))
    report(result, args.json)
    fresh = result["freshness_s"] or {}
    ident = result["freshness_s_identified"] or {}
    print(f"{'runner':>12} {'sent/s':>8} {'read/s':>8} {'commit/s':>9} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} "
          f"{'visible':>9} {'backlog':>8}  kept up  identified p50/p99 s")
    print(f"{args.runner:>12} {result['rate_sent']:>8} {str(result['read_per_s_while_sending']):>8} "
          f"{str(result['committed_per_s_while_sending']):>9} {str(fresh.get('p50')):>7} {str(fresh.get('p95')):>7} "
          f"{str(fresh.get('p99')):>7} {len(delays):>4}/{len(sent_at):<4} {result['backlog_when_sending_ended']:>8}  "
          f"{'yes' if result['kept_up'] else 'no':>7}  {ident.get('p50')}/{ident.get('p99')}")


if __name__ == "__main__":
    main()
