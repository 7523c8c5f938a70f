"""Validation time per table and batch: the row gate and the checkpoint of transforms/data_quality.py, timed on
the tables of a landed warehouse (by default the one `make demo` leaves), each table's rows taken as one batch.

    .venv/bin/python deploy/bench/validation_time.py [--warehouse .local/warehouse/journeys.published.duckdb]
        [--repeat 3] [--json result.json]

Works on a copy, so a running stream is not disturbed. Per table: rows, the row gate on all of them (the batch a
backfill lands), the checkpoint a backfill runs (the whole table: row-level suite, unique key, column types, table
rules) and the one a streaming flush runs (column types and table rules); the fastest of --repeat runs, after one
warm-up. Great Expectations' import and context, paid once per process, are timed apart.
"""
import argparse
import datetime as dt
import shutil
import sys
import tempfile
import time
from pathlib import Path

from report import peak_rss_mib, report


def fastest(repeat: int, work) -> float:
    work()  # warm-up: suites are built on first use
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return round(min(times), 3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warehouse", type=Path, default=Path(".local/warehouse/journeys.published.duckdb"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    from transforms.dq_suites import _SUITES

    _SUITES.gx()
    gx_start_s = round(time.perf_counter() - started, 3)

    from transforms.data_quality import validated_tables
    from transforms.dq_checkpoint import checkpoint
    from transforms.dq_gate import gate
    from transforms.dq_suites import QualityConfig
    from transforms.duckdb_warehouse import DuckDBWarehouse

    config = QualityConfig(max_event_age_hours=24 * 365)
    now = dt.datetime.now(dt.timezone.utc)
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "journeys.duckdb"
        shutil.copyfile(args.warehouse, copy)
        warehouse = DuckDBWarehouse(copy)
        tables = {}
        try:
            for table in validated_tables():
                rows = warehouse.query_frame(f'SELECT * FROM "{table}"').to_dict("records")
                tables[table] = {
                    "rows": len(rows),
                    "row_gate_s": fastest(args.repeat, lambda: gate(table, rows, "bench", now, config)) if rows else 0,
                    "checkpoint_backfill_s": fastest(args.repeat, lambda: checkpoint(warehouse, [table], config, "all")),
                    "checkpoint_flush_s": fastest(args.repeat,
                                                  lambda: checkpoint(warehouse, [table], config, "after_gate")),
                }
        finally:
            warehouse.close()
    report({"warehouse": str(args.warehouse), "repeat": args.repeat, "gx_import_and_context_s": gx_start_s,
            "tables": tables, "all_tables": {k: round(sum(t[k] for t in tables.values()), 3)
                                            for k in ("row_gate_s", "checkpoint_backfill_s", "checkpoint_flush_s")},
            "peak_rss_mib": peak_rss_mib()}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
