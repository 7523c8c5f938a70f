"""Events/s of the analytics stage alone (CustomerJourneyTables: all eight output tables) from decoded records in
memory, on a local runner. A benchmark, not a test:

    .venv/bin/python deploy/bench/journeys_rate.py --customers 5000 --days 60 [--runner DirectRunner] [beam options]
"""
from __future__ import annotations

import argparse
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from report import peak_rss_mib, report

from pipelines.generate import GeneratorConfig, records_by_topic
from pipelines.runners import runner_args
from transforms.journey_tables import CustomerJourneyTables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--days", type=float, default=60)
    parser.add_argument("--runner", default="DirectRunner", choices=("DirectRunner", "PrismRunner", "FnApiRunner"))
    parser.add_argument("--json", metavar="FILE")
    args, beam_args = parser.parse_known_args()
    by_topic = records_by_topic(GeneratorConfig(customers=args.customers, days=args.days, seed=3), b"bench")
    events = sum(len(v) for v in by_topic.values())

    started = time.perf_counter()
    runner = ["--runner=FnApiRunner"] if args.runner == "FnApiRunner" else runner_args(args.runner)
    with beam.Pipeline(options=PipelineOptions(runner + beam_args)) as pipeline:
        def timed(label, records):
            return (pipeline | f"Create{label}" >> beam.Create(records)
                    | f"Time{label}" >> beam.Map(lambda r: TimestampedValue(r, Timestamp.from_utc_datetime(r["event_time"]))))

        topics = {topic: timed(topic, records) for topic, records in by_topic.items()}
        for name, rows in (topics | CustomerJourneyTables()).items():  # the tables and the failed events
            _ = rows | f"Count{name}" >> beam.combiners.Count.Globally().without_defaults()
    seconds = time.perf_counter() - started
    report({"customers": args.customers, "days": args.days, "events": events, "seconds": round(seconds, 2),
            "events_per_s": round(events / seconds), "peak_rss_mib": peak_rss_mib(),
            "runner": args.runner, "beam_args": beam_args}, args.json)


if __name__ == "__main__":
    main()
