"""`journeys backfill`: Kafka → decode → journey tables → the DuckDB warehouse, then a published copy for BI.

    journeys backfill --runner PrismRunner --warehouse .local/warehouse/journeys.duckdb

Reads every topic from its earliest offset to the end offsets seen at launch, computes every table and commits
them with those end offsets and the dead letters in one transaction. Running it again recomputes the same rows
and upserts them: nothing is counted twice.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

import schemas
from pipelines.runners import add_kafka_pipeline_args, run_kafka_pipeline
from schemas.contracts import contract
from transforms.customer_profiles import updating_global_window
from transforms.decode_events import DEAD_LETTERS, DeadLetter, DecodeEvents, EventDecoder
from transforms.duckdb_warehouse import DuckDBWarehouse
from transforms.journey_tables import TABLES, CustomerJourneyTables
from transforms.kafka_connection import KafkaConnection
from transforms.kafka_source import ReadFromKafka, StartAt, resolve_launch

log = logging.getLogger("journeys.backfill")
DEFAULT_WAREHOUSE = Path(".local/warehouse/journeys.duckdb")


def dead_letter_row(dead: DeadLetter) -> dict:
    when = (dt.datetime.fromtimestamp(dead.kafka_timestamp_ms / 1000, dt.timezone.utc)
            if dead.kafka_timestamp_ms is not None else None)
    return {"topic": dead.topic, "partition": dead.partition, "offset": dead.offset, "kafka_timestamp": when,
            "key": dead.key, "value": dead.value, "stage": dead.stage, "reason": dead.reason, "error": dead.error,
            "first_seen": dead.first_seen}


def latest_rows(table: str, rows) -> list[dict]:
    """One row per primary key: the highest revision where a table has one (a correction supersedes)."""
    key = contract(table).primary_key
    latest: dict = {}
    for row in rows:
        known = latest.get(tuple(row[k] for k in key))
        if known is None or row.get("revision", 0) >= known.get("revision", 0):
            latest[tuple(row[k] for k in key)] = row
    return list(latest.values())


class _CommitAll(beam.DoFn):
    """Every table's rows, gathered under one key, committed with the end offsets in one transaction."""

    def __init__(self, warehouse: str, offsets: dict):
        self.warehouse = warehouse
        self.offsets = offsets

    def process(self, element):
        by_table: dict[str, list] = {}
        for table, row in element[1]:
            by_table.setdefault(table, []).append(row)
        rows = {table: latest_rows(table, by_table.get(table, [])) for table in (*TABLES, "dead_letters")}
        warehouse = DuckDBWarehouse(self.warehouse)
        try:
            warehouse.commit(rows, self.offsets)
            published = warehouse.publish()
        finally:
            warehouse.close()
        yield {"published": str(published), **{table: len(table_rows) for table, table_rows in rows.items()}}


def build(pipeline, args, connection: KafkaConnection):
    decoder = EventDecoder.for_prefix(args.topic_prefix)
    topics = tuple(args.topic_prefix + t for t in schemas.TOPICS)
    _, stop, _ = resolve_launch(connection, topics, StartAt(), bounded=True)
    end_offsets = dict(stop)
    log.info("backfill of %d records in %d partitions up to the end offsets at launch",
             sum(end_offsets.values()), len(end_offsets))
    messages = pipeline | "Read" >> ReadFromKafka(connection, list(topics), bounded=True, stop_offsets=end_offsets,
                                                  event_time=decoder)
    decoded = messages | "Decode" >> DecodeEvents(decoder)
    tables = {t: decoded[t] for t in schemas.TOPICS} | "Journeys" >> CustomerJourneyTables()
    tables["dead_letters"] = decoded[DEAD_LETTERS] | "DeadLetterRows" >> beam.Map(dead_letter_row)
    # data_driven_attribution comes out of event-time windows: all tables into one window before they meet
    tagged = [rows | f"Unwindow{name}" >> beam.WindowInto(GlobalWindows())
              | f"Tag{name}" >> beam.Map(lambda row, name=name: (name, row)) for name, rows in tables.items()]
    return (tagged | "AllTables" >> beam.Flatten()
            | "OneWriter" >> beam.Map(lambda table_row: (None, table_row))
            | "WhenAllIn" >> updating_global_window(messages, None)
            | "Gather" >> beam.GroupByKey()
            | "Commit" >> beam.ParDo(_CommitAll(str(args.warehouse), end_offsets))
            | "Report" >> beam.Map(lambda summary: print(summary, flush=True)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="journeys backfill", description=__doc__.split("\n\n")[0])
    add_kafka_pipeline_args(parser)
    parser.add_argument("--warehouse", type=Path, default=DEFAULT_WAREHOUSE, help="DuckDB file (default: %(default)s)")
    return parser.parse_known_args(argv)


def main(argv=None) -> int:
    args, beam_args = parse_args(argv)
    return run_kafka_pipeline(build, args, beam_args)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
