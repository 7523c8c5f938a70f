"""`journeys validate`: the data-quality checkpoint on what the warehouse holds now, for cron or an orchestrator.

    journeys validate [--table order_attribution] [--warehouse FILE | --bigquery-project P ...]

Exit code 0: every expectation held; 1: only warn-severity ones failed; 2: a block-severity one failed; 3: the
warehouse could not be opened (a corrupt or unreadable file: nothing was validated). Results
land in dq_results, new incidents alert (deduplicated with what the pipeline already reported), and Data Docs are
written. While a stream holds the DuckDB file, the published copy is validated instead, read-only (results are
printed and alerted, not stored).
"""
from __future__ import annotations

import argparse
import logging
import sys

from pipelines.runners import add_quality_args, add_warehouse_args, quality_config, warehouse_target

log = logging.getLogger("journeys.validate")
UNREADABLE = 3


class WarehouseUnreadable(Exception):
    pass


def exit_code(results) -> int:
    """2 when a block-severity expectation of the checkpoint failed (publishing held back), 1 for any other failure
    (a warn, or rows the gate quarantined), else 0."""
    failed = results[~results["success"].astype(bool)]
    if ((failed["severity"] == "block") & (failed["stage"] == "checkpoint")).any():
        return 2
    return 1 if len(failed) else 0


def print_summary(results) -> None:
    if results.empty:
        print("validation: nothing validated")
        return
    print("validation (table: expectations held / checked):")
    for table, rows in results.groupby("table_name", sort=True):
        held = int(rows["success"].astype(bool).sum())
        print(f"  {table}: {held}/{len(rows)}")
        for row in rows[~rows["success"].astype(bool)].itertuples():
            print(f"    FAILED {row.expectation} [{row.stage}, {row.severity}]: {row.observed_value}")


def _open(args):
    import duckdb

    from transforms.duckdb_warehouse import DuckDBWarehouse, held_by_a_writer
    from transforms.warehouse import open_warehouse

    try:
        return open_warehouse(warehouse_target(args)), True
    except duckdb.Error as error:
        if not held_by_a_writer(error):
            raise WarehouseUnreadable(f"journeys validate: cannot open {args.warehouse}: {error}") from None
        published = args.warehouse.with_suffix(".published.duckdb")
        log.warning("%s is held by a running job: validating its published copy %s, read-only", args.warehouse,
                    published)
        return DuckDBWarehouse(published, read_only=True), False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="journeys validate", description=__doc__.split("\n\n")[0])
    add_warehouse_args(parser)
    add_quality_args(parser)
    parser.add_argument("--table", action="append", help="validate only this table (repeatable; default: all)")
    args = parser.parse_args(argv)
    from transforms.data_quality import ValidatedLanding, validated_tables
    from transforms.dq_checkpoint import result_rows

    tables = args.table or validated_tables()
    unknown = set(tables) - set(validated_tables())
    if unknown:
        parser.error(f"not a validated table: {', '.join(sorted(unknown))}; known: {', '.join(validated_tables())}")
    try:
        warehouse, writable = _open(args)
    except WarehouseUnreadable as error:
        print(error, file=sys.stderr)
        return UNREADABLE
    try:
        landing = ValidatedLanding(warehouse, quality_config(args), "validate", record=writable).validate(tables)
    finally:
        warehouse.close()
    import pandas as pd

    results = pd.DataFrame(result_rows(list(landing.outcomes), landing.run_id, "validate", None))
    print_summary(results)
    if landing.data_docs:
        print(f"Data Docs: {landing.data_docs}")
    return exit_code(results)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
