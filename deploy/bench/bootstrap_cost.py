"""What the bootstrap adds to data_driven_attribution's fits, on a generated world in memory (a benchmark, not a
test): every window's fit is timed (CPU of the fitting thread) with 0, 100 and 200 resamples on the same summary,
and the windows' paths and distinct paths are counted (what the summaries now keep for the bootstrap).

    .venv/bin/python deploy/bench/bootstrap_cost.py --customers 3000 --days 60 [--json FILE]
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from report import report

import transforms.customer_journeys as journeys
from pipelines.generate import GeneratorConfig, records_by_topic
from transforms.journey_tables import CustomerJourneyTables

RESAMPLES = (0, 100, 200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--days", type=float, default=60)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    fitted, fits = journeys._fitted, []

    def timed(start, window, summary, config):
        cpu = {}
        for resamples in RESAMPLES:
            again = dataclasses.replace(config, bootstrap_resamples=resamples)
            began = time.thread_time()
            list(fitted(start, window, summary, again))
            cpu[resamples] = time.thread_time() - began
        fits.append({"paths": summary.paths, "distinct": len(summary.distinct), "cpu_s": cpu})
        return fitted(start, window, summary, config)

    journeys._fitted = timed  # the fit step looks it up when it runs (FnApiRunner: in this process)
    by_topic = records_by_topic(GeneratorConfig(customers=args.customers, days=args.days, seed=3), b"bench")
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as pipeline:
        topics = {topic: (pipeline | f"Create{topic}" >> beam.Create(records) | f"Time{topic}" >> beam.Map(
            lambda r: TimestampedValue(r, Timestamp.from_utc_datetime(r["event_time"]))))
            for topic, records in by_topic.items()}
        _ = (topics | CustomerJourneyTables())["data_driven_attribution"] | beam.combiners.Count.Globally()
    largest = max(fits, key=lambda fit: fit["paths"])
    report({"customers": args.customers, "days": args.days, "events": sum(len(v) for v in by_topic.values()),
            "windows": len(fits), "paths": sum(f["paths"] for f in fits), "distinct_paths": sum(f["distinct"] for f in fits),
            "largest_window": {"paths": largest["paths"], "distinct_paths": largest["distinct"],
                               "cpu_s": {r: round(largest["cpu_s"][r], 3) for r in RESAMPLES}},
            "fits_cpu_s": {r: round(sum(f["cpu_s"][r] for f in fits), 3) for r in RESAMPLES}}, args.json)


if __name__ == "__main__":
    main()
