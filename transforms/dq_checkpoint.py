"""The table checkpoint, after each backfill, each streaming flush and on `journeys validate`: contract expectations
on every landed row, the primary key unique, the columns of the contract's types, and the contract's table rules
(each a query whose values must lie within bounds); a streaming flush runs the parts that read no table whole. A
landed table one query shows clean is not read whole into pandas for Great Expectations (dq_suites.surely_passing)."""
from __future__ import annotations

import datetime as dt
import re

from schemas.contracts import contract
from transforms.dq_suites import Outcome, QualityConfig, surely_passing, validate

# Types as the warehouses report them → the contract's base types.
_LANDED = {"VARCHAR": "string", "BIGINT": "int", "DOUBLE": "float", "BOOLEAN": "bool",
           "TIMESTAMP WITH TIME ZONE": "timestamp", "DATE": "date", "BLOB": "bytes",
           "STRING": "string", "INT64": "int", "INTEGER": "int", "FLOAT64": "float", "FLOAT": "float",
           "BOOL": "bool", "TIMESTAMP": "timestamp", "BYTES": "bytes", "NUMERIC": "decimal", "BIGNUMERIC": "decimal"}


def _base(landed: str) -> str:
    return "decimal" if re.match(r"DECIMAL\(", landed) else _LANDED.get(landed, landed.lower())


def types_frame(warehouse, table: str):
    import pandas as pd

    landed = warehouse.landed_types(table)
    return pd.DataFrame([{"column": c.name, "contract_type": c.base_type,
                          "landed_type": _base(landed[c.name]) if c.name in landed else "missing"}
                         for c in contract(table).columns])


def checkpoint(warehouse, tables, config: QualityConfig = QualityConfig(), scope: str = "all") -> list[Outcome]:
    """Each table's suite on what the warehouse holds now. `all`: every expectation. `after_gate`: what the row gate
    of the rows just landed has not already checked (column types, table rules); the row-level expectations and the
    unique key (which the warehouse's upsert by key enforces) are left to `all`, so a flush reads no table whole.
    `rules`: the table rules only."""
    outcomes = []
    for table in tables:
        if scope != "rules":
            outcomes += validate(table, "types", types_frame(warehouse, table), config)
        if scope == "all":
            whole = f'"{table}"'
            first_row = lambda sql: tuple(warehouse.query_frame(sql).iloc[0])
            clean = surely_passing(table, "table", first_row, whole, config)
            outcomes += clean if clean is not None else validate(
                table, "table", warehouse.query_frame(f"SELECT * FROM {whole}"), config)
        for rule in contract(table).table_rules:
            outcomes += validate(table, "rule", warehouse.query_frame(rule.query), config, rule=rule)
    return outcomes


def result_rows(outcomes: list[Outcome], run_id: str, run_kind: str, now: dt.datetime) -> list[dict]:
    """dq_results rows of these outcomes."""
    return [{"run_id": run_id, "run_kind": run_kind, "table_name": o.table, "stage": o.stage,
             "expectation": o.expectation, "expectation_type": o.expectation_type, "success": o.success,
             "observed_value": None if o.observed_value is None else o.observed_value[:2000],
             "unexpected_count": o.unexpected_count, "element_count": o.element_count, "severity": o.severity,
             "validated_at": now} for o in outcomes]
