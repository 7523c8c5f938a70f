"""Streaming freshness: how long after a record is produced its row is visible to a BI reader. A benchmark, not a test:

    .venv/bin/python deploy/bench/stream_freshness.py --rate 20 --customers 300 --days 30 [--json FILE]

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
    if record.event is None:
        return None
    return record.event.get("session_id") if record.topic == "web_sessions" else record.event.get("event_id")


def poll(published: Path, seen: dict, stop: threading.Event, every_s: float = 0.5) -> None:
    while not stop.is_set():
        if published.exists():
            try:
                with duckdb.connect(str(published), read_only=True) as con:
                    ids = con.execute("SELECT touch_id FROM touchpoints").fetchall()
                now = time.time()
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
    parser.add_argument("--settle-s", type=float, default=90, help="wait this long after the last send")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    connection = KafkaConnection.from_env()
    prefix = f"fresh{uuid.uuid4().hex[:8]}_"
    ensure_topics(connection, prefix=prefix)
    records = generate(GeneratorConfig(customers=args.customers, days=args.days, seed=11), b"bench")
    work = Path(tempfile.mkdtemp(prefix="freshness"))
    warehouse = work / "journeys.duckdb"
    job = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "stream", "--runner", "PrismRunner",
                            "--topic-prefix", prefix, "--warehouse", str(warehouse), "--commit-every-s",
                            args.commit_every_s, "--update-every-s", "30", "--log-every-s", "10"],
                           stdout=open(work / "stream.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                           env=os.environ)
    seen: dict = {}
    stop = threading.Event()
    poller = threading.Thread(target=poll, args=(warehouse.with_suffix(".published.duckdb"), seen, stop))
    poller.start()
    try:
        time.sleep(20)  # the job starts its runner and reaches the topics
        started = time.time()
        sent_at = {tid: started + i / args.rate for i, r in enumerate(records) if (tid := touch_id(r))}
        stats = produce(records, connection, topic_prefix=prefix, rate=args.rate)
        time.sleep(args.settle_s)
    finally:
        stop.set()
        poller.join()
        os.killpg(job.pid, signal.SIGTERM)
        job.wait(timeout=60)
    delays = sorted(seen[t] - sent_at[t] for t in seen if t in sent_at)
    report({"benchmark": "stream_freshness", "rate_target": args.rate,
            "rate_sent": round(stats.records / stats.seconds, 1), "records": stats.records,
            "touches_sent": len(sent_at), "touches_visible": len(delays),
            "freshness_s": {"p50": round(percentile(delays, 50), 2), "p95": round(percentile(delays, 95), 2),
                            "p99": round(percentile(delays, 99), 2), "max": round(delays[-1], 2)} if delays else None,
            "log": str(work / "stream.log")}, args.json)


if __name__ == "__main__":
    main()
