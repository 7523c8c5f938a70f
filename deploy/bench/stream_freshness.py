"""Streaming freshness: how long after a record is produced its row is visible to a BI reader. A benchmark, not a test:

    .venv/bin/python deploy/bench/stream_freshness.py --rate 20 --customers 300 --days 30 [--json FILE]
    .venv/bin/python deploy/bench/stream_freshness.py --rate 2000 --duration-s 60 [--json FILE]

With --duration-s it sends for that long at the rate (customers sized to fill it) and reports whether the job kept
up (committed at least 95 % of the send rate while sending), the backlog when sending ended, and how long the job
then took to commit every record (null: not within --settle-s).

Starts `journeys stream` (Prism, DuckDB) on fresh topics of the local broker, produces a generated world at a fixed
rate, and polls the published warehouse copy for touchpoints as a BI tool would. Freshness of a touch = when its row
first shows in the published copy − when its record was due to be sent (the producer paces sends; one running
behind only makes the figure larger). Touches of visitors still anonymous wait for a login or their deadline in
event time by design (identity stitching), so the percentiles are given for the touches that appeared.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import duckdb
from report import report

from pipelines.generate import GeneratorConfig, generate
from pipelines.generate.sinks import produce
from pipelines.kafka_topics import ensure_topics
from transforms.kafka_connection import KafkaConnection


def touch_id(record) -> str | None:
    if record.event is None or record.topic == "orders":  # orders are not touches
        return None
    return record.event.get("session_id") if record.topic == "web_sessions" else record.event.get("event_id")


EVENTS_PER_CUSTOMER_30_DAYS = 5


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
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    connection = KafkaConnection.from_env()
    prefix = f"fresh{uuid.uuid4().hex[:8]}_"
    ensure_topics(connection, prefix=prefix)
    customers = args.customers
    if args.duration_s:
        customers = int(args.rate * args.duration_s / EVENTS_PER_CUSTOMER_30_DAYS * 30 / args.days) + 1
    records = generate(GeneratorConfig(customers=customers, days=args.days, seed=11), b"bench")
    if args.duration_s:
        records = records[:int(args.rate * args.duration_s)]
    work = Path(tempfile.mkdtemp(prefix="freshness"))
    warehouse = work / "journeys.duckdb"
    job = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "stream", "--runner", "PrismRunner",
                            "--topic-prefix", prefix, "--warehouse", str(warehouse), "--commit-every-s",
                            args.commit_every_s, "--update-every-s", "30", "--log-every-s", "10"],
                           stdout=open(work / "stream.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                           env=os.environ)
    seen: dict = {}
    committed: list = []  # (when, records committed)
    stop = threading.Event()
    poller = threading.Thread(target=poll, args=(warehouse.with_suffix(".published.duckdb"), seen, committed, stop))
    poller.start()
    try:
        time.sleep(20)  # the job starts its runner and reaches the topics
        started = time.time()
        sent_at = {tid: started + i / args.rate for i, r in enumerate(records) if (tid := touch_id(r))}
        stats = produce(records, connection, topic_prefix=prefix, rate=args.rate)
        sent_end = time.time()
        deadline = sent_end + args.settle_s
        while time.time() < deadline and not (committed and committed[-1][1] >= len(records)):
            time.sleep(1)
    finally:
        stop.set()
        poller.join()
        os.killpg(job.pid, signal.SIGTERM)
        job.wait(timeout=60)
    delays = sorted(seen[t] - sent_at[t] for t in seen if t in sent_at)
    at_send_end = max((n for when, n in committed if when <= sent_end), default=0)
    caught_up = next((when - sent_end for when, n in committed if n >= len(records)), None)
    in_window = [(when, n) for when, n in committed if started <= when <= sent_end]
    commit_rate = ((in_window[-1][1] - in_window[0][1]) / (in_window[-1][0] - in_window[0][0])
                   if len(in_window) > 1 and in_window[-1][0] > in_window[0][0] else None)
    report({"benchmark": "stream_freshness", "rate_target": args.rate,
            "rate_sent": round(stats.records / stats.seconds, 1), "records": stats.records,
            "touches_sent": len(sent_at), "touches_visible": len(delays),
            "committed_when_sending_ended": at_send_end, "backlog_when_sending_ended": len(records) - at_send_end,
            "committed_per_s_while_sending": round(commit_rate, 1) if commit_rate is not None else None,
            "all_committed_s_after_sending": round(caught_up, 1) if caught_up is not None else None,
            # kept up: committed about as fast as the records were sent (a job that falls behind builds a backlog)
            "kept_up": commit_rate is not None and commit_rate >= 0.95 * stats.records / stats.seconds,
            "freshness_s": {"p50": round(percentile(delays, 50), 2), "p95": round(percentile(delays, 95), 2),
                            "p99": round(percentile(delays, 99), 2), "max": round(delays[-1], 2)} if delays else None,
            "log": str(work / "stream.log")}, args.json)


if __name__ == "__main__":
    main()
