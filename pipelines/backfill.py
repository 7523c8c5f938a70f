"""`journeys backfill`: Kafka → decode → journey tables → the warehouse (DuckDB, or BigQuery), in one commit.

    journeys backfill [--runner FnApiRunner] --warehouse .local/warehouse/journeys.duckdb

Reads every topic from its earliest offset to the end offsets seen at launch, computes every table (each bundle
stages its rows in Parquet files, transforms/staging.py: no step gathers the rows) and lands them through the
data-quality gate (rows breaking a row rule go to `quarantine`) with those end offsets and the dead letters in one
commit, validates the landed tables (results in `dq_results`, alerts) and publishes a copy for BI
readers unless a block-severity expectation failed: then it exits 2. Running it again recomputes the same rows
and upserts them: nothing is counted twice.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

import apache_beam as beam

import schemas
from pipelines import flink
from pipelines.runners import (BATCH_RUNNER, add_effects_args, add_kafka_pipeline_args, add_quality_args,
                               add_warehouse_args, open_target, parse_with_beam_args, quality_config,
                               required_pseudonymiser, run_kafka_pipeline, warehouse_target)
from transforms.customer_profiles import updating_global_window
from transforms.decode_events import EventDecoder
from transforms.journey_tables import TABLES, TablesConfig, TablesFromMessages
from transforms.kafka_connection import KafkaConnection
from transforms.kafka_source import ReadFromKafka, StartAt, resolve_launch
from transforms.progress import LogProgress
from transforms.data_quality import ValidatedLanding, new_run_id
from transforms.staging import StageTables
from transforms.warehouse import open_warehouse

log = logging.getLogger("journeys.backfill")
# FnApiRunner's worker processes: one per core (Beam's --direct_num_workers and --direct_running_mode choose
# otherwise). Each stage's bundles, the partitions read among them, run in parallel.
BATCH_WORKERS = os.cpu_count() or 1


class _CommitStaged(beam.DoFn):
    """Every table's staging files (a handful of paths per bundle) landed through the quality gate with the end
    offsets, in one commit; the run's staging directory is removed after."""

    def __init__(self, target, offsets: dict, quality, run_id: str, directory: str):
        self.target = target
        self.offsets = offsets
        self.quality = quality
        self.run_id = run_id
        self.directory = directory

    def process(self, element):
        files: dict[str, list[str]] = {}
        for table, path in element[1]:
            files.setdefault(table, []).append(path)
        warehouse = open_warehouse(self.target)
        try:
            landing = ValidatedLanding(warehouse, self.quality, "backfill").land_staged(
                files, self.offsets, self.run_id, spill_dir=str(Path(self.directory) / "spill"))
        finally:
            warehouse.close()
            shutil.rmtree(self.directory, ignore_errors=True)
            try:
                Path(self.directory).parent.rmdir()  # the staging directory, once no other run stages there
            except OSError:
                pass
        yield {"published": str(landing.published), "quarantined": landing.quarantined,
               **{table: landing.landed.get(table, 0) for table in (*TABLES, "dead_letters")}}


def staging_directory(args) -> str:
    """Where this run's bundles stage their rows (default: beside the DuckDB file). Every worker and the committing
    one must see it: a shared mount on a cluster of several hosts."""
    base = Path(args.staging_dir) if args.staging_dir else Path(args.warehouse).with_suffix(".staging")
    return str((base / args.run_id).absolute())


def build(pipeline, args, connection: KafkaConnection):
    decoder = EventDecoder.for_prefix(args.topic_prefix, pseudonyms=required_pseudonymiser(args))
    topics = tuple(args.topic_prefix + t for t in schemas.TOPICS)
    _, stop, _ = resolve_launch(connection, topics, StartAt(), bounded=True)
    end_offsets = args.end_offsets = dict(stop)
    log.info("backfill of %d records in %d partitions up to the end offsets at launch",
             sum(end_offsets.values()), len(end_offsets))
    # Replayed keyed state emits once all input is grouped, behind the watermark: only a batch engine that drops
    # no late data may replay it (on Prism the data-driven windows lost every path as late). FnApiRunner and Flink
    # (a pipeline bounded throughout runs in its batch mode, its groupings sorted and spilled to disk) read each
    # partition whole and replay; Prism keeps the unbounded read and the stateful steps.
    replay = args.runner in (BATCH_RUNNER, flink.RUNNER)
    messages = pipeline | "Read" >> ReadFromKafka(connection, list(topics), bounded=True, stop_offsets=end_offsets,
                                                  event_time=decoder, whole_partitions=replay)
    _ = messages | "Progress" >> beam.ParDo(LogProgress(connection, end_offsets, args.log_every_s))
    tables = messages | "Tables" >> TablesFromMessages(
        decoder, TablesConfig(update_every_s=None, replay_keyed_state=replay,
                              bootstrap_resamples=args.bootstrap_resamples, bootstrap_seed=args.bootstrap_seed))
    directory = staging_directory(args)
    return (tables | "Stage" >> StageTables(directory)
            | "OneCommit" >> beam.Map(lambda staged: (None, staged))
            | "WhenAllIn" >> updating_global_window(messages, None)
            | "Gather" >> beam.GroupByKey()
            | "Commit" >> beam.ParDo(_CommitStaged(warehouse_target(args), end_offsets, quality_config(args),
                                                   args.run_id, directory))
            | "Report" >> beam.Map(lambda summary: print(landed_summary(summary), flush=True)))


def landed_summary(summary: dict) -> str:
    """What a backfill's commit landed, as lines a person reads (the commit step's dict: published, quarantined,
    then rows per table)."""
    tables = {k: v for k, v in summary.items() if k not in ("published", "quarantined")}
    width = max(map(len, tables), default=0)
    return "\n".join([f"landed (rows per table; published copy: {summary['published']}):",
                      *(f"  {table.ljust(width)}  {rows:>12,}" for table, rows in tables.items()),
                      f"  rows the gate quarantined: {summary['quarantined']:,}"])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="journeys backfill", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)  # Beam's --update is not our --update-every-s
    add_kafka_pipeline_args(parser, bounded=True)
    add_warehouse_args(parser)
    add_quality_args(parser)
    add_effects_args(parser)
    parser.add_argument("--log-every-s", type=float, default=10.0, help="progress log interval")
    parser.add_argument("--staging-dir", help="where bundles stage table rows before the one commit (default: "
                                              "beside the DuckDB file); on a cluster of several hosts, a directory "
                                              "every worker shares")
    return parse_with_beam_args(parser, argv)


def main(argv=None) -> int:
    args, beam_args = parse_args(argv)
    args.run_id = new_run_id("backfill")
    status = run_kafka_pipeline(build, args, beam_args, batch_workers=BATCH_WORKERS)
    if status:
        return status
    from pipelines.validate import exit_code, print_summary

    warehouse = open_target(args)
    try:
        landed = warehouse.offsets()
        results = warehouse.query_frame(f"SELECT * FROM dq_results WHERE run_id = '{args.run_id}'")
    finally:
        warehouse.close()
    short = {partition: end for partition, end in args.end_offsets.items() if landed.get(partition, 0) < end}
    if short:  # a run that ended without its commit (a runner that lost the read, say) must not pass
        log.error("the run ended without landing its input: %d of %d partitions were not committed up to their end "
                  "offsets at launch (%s)", len(short), len(args.end_offsets),
                  ", ".join(f"{t}[{p}]: {landed.get((t, p), 0)} < {end}" for (t, p), end in sorted(short.items())))
        return 1
    print_summary(results)
    code = exit_code(results)
    if code == 2:
        log.error("block-severity expectations failed: the tables were landed but not published")
    return 2 if code == 2 else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
