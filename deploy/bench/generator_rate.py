"""How fast the generator simulates, encodes and produces into the local broker. A benchmark, not a test.

    .venv/bin/python deploy/bench/generator_rate.py --customers 20000 --days 60 [--json out.json]

Produces to fresh topics (prefix bench<time>_) on JOURNEYS_KAFKA_* / the local broker, acks=all.
"""
from __future__ import annotations

import argparse
import time

from report import peak_rss_mib, report

from pipelines.generate import GeneratorConfig, simulate, to_records
from pipelines.generate.sinks import produce
from pipelines.kafka_topics import ensure_topics
from transforms.kafka_connection import KafkaConnection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--days", type=float, default=60)
    parser.add_argument("--format", default="confluent")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    config = GeneratorConfig(customers=args.customers, days=args.days, seed=1)
    started = time.perf_counter()
    events = simulate(config, b"bench-key")
    simulated = time.perf_counter()
    records = to_records(events, seed=1, fmt=args.format, malformed=0.01)
    encoded = time.perf_counter()
    connection = KafkaConnection.from_env()
    prefix = f"bench{int(time.time())}_"
    ensure_topics(connection, prefix=prefix)
    stats = produce(records, connection, topic_prefix=prefix)

    report({
        "customers": args.customers, "days": args.days, "format": args.format, "records": len(records),
        "simulate_events_per_s": round(len(events) / (simulated - started)),
        "encode_records_per_s": round(len(records) / (encoded - simulated)),
        "produce_records_per_s": round(stats.rate),
        "end_to_end_records_per_s": round(len(records) / (time.perf_counter() - started)),
        "peak_rss_mib": peak_rss_mib(),
    }, args.json)


if __name__ == "__main__":
    main()
