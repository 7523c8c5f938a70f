"""The row gate: a batch of one table's rows, validated before it lands; rows that break a row-level rule go to
`quarantine` (with the rule and the offending values) instead of the table. A batch comes as dicts (a stream's
flush) or as an Arrow table (a backfill's staged rows), which is gated without becoming dicts."""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from schemas.contracts import RETRACTED, contract
from transforms.dq_suites import Outcome, QualityConfig, checks, surely_passing_data, validate


@dataclass(frozen=True)
class Gated:
    passed: object  # list[dict], or a pyarrow Table for an Arrow batch
    quarantined: list[dict]  # quarantine rows
    outcomes: list[Outcome]
    held: object = None  # gate_arrow: the quarantined rows as an Arrow table (what a staged table drops)


def row_frame(table: str, rows: list[dict]):
    import pandas as pd

    columns = [c.name for c in contract(table).columns]
    return pd.DataFrame.from_records([{name: row.get(name) for name in columns} for row in rows], columns=columns)


def arrow_frame(table: str, batch):
    """The frame row_frame makes of the same rows: dates and decimals as Python objects, integers with nulls as
    floats, timestamps as UTC datetimes."""
    columns = [c.name for c in contract(table).columns]
    return batch.select(columns).to_pandas(date_as_object=True, coerce_temporal_nanoseconds=True)


def gate(table: str, rows: list[dict], run_id: str, now: dt.datetime,
         config: QualityConfig = QualityConfig()) -> Gated:
    """Split `rows` into those that land and quarantine rows. Retractions always pass: they only delete."""
    checked = [row for row in rows if not row.get(RETRACTED)]
    if not checked:
        return Gated(list(rows), [], [])
    clean = _surely_passing(table, _as_arrow(table, checked), config)
    if clean is not None:
        return Gated(list(rows), [], clean)
    outcomes = validate(table, "rows", row_frame(table, checked), config)
    broken = _broken(table, outcomes, config)
    quarantined = [_quarantine_row(table, checked[index], outcome, columns, run_id, now)
                   for index, outcome, columns in broken]
    held = {index for index, _, _ in broken}
    passed = [row for index, row in enumerate(checked) if index not in held]
    return Gated(passed + [row for row in rows if row.get(RETRACTED)], quarantined, outcomes)


def gate_arrow(table: str, batch, run_id: str, now: dt.datetime, config: QualityConfig = QualityConfig()) -> Gated:
    """gate() of an Arrow table of the contract's columns and RETRACTED: the rows that pass stay an Arrow table;
    only the quarantined ones become dicts."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    retracted = pc.fill_null(batch[RETRACTED], False)
    checked = batch.filter(pc.invert(retracted))
    if not checked.num_rows:
        return Gated(batch, [], [])
    clean = _surely_passing(table, checked, config)
    if clean is not None:
        return Gated(batch, [], clean)
    outcomes = validate(table, "rows", arrow_frame(table, checked), config)
    broken = _broken(table, outcomes, config)
    if not broken:
        return Gated(batch, [], outcomes)
    held = sorted({index for index, _, _ in broken})
    rows = dict(zip(held, checked.take(held).to_pylist()))
    quarantined = [_quarantine_row(table, rows[index], outcome, columns, run_id, now)
                   for index, outcome, columns in broken]
    keep = np.ones(checked.num_rows, dtype=bool)
    keep[held] = False
    return Gated(pa.concat_tables([checked.filter(pa.array(keep)), batch.filter(retracted)]), quarantined, outcomes,
                 checked.take(held))


def _as_arrow(table: str, rows: list[dict]):
    """The rows in the contract's Arrow types; None when a value does not convert (Great Expectations reports it)."""
    import pyarrow as pa

    from transforms.duckdb_warehouse import arrow_batch

    try:
        return arrow_batch(table, rows)
    except (pa.ArrowException, ArithmeticError, TypeError, ValueError):
        return None


def _surely_passing(table: str, batch, config: QualityConfig) -> list[Outcome] | None:
    if batch is None:
        return None
    return surely_passing_data(table, "rows", batch, config)


def _broken(table: str, outcomes: list[Outcome], config: QualityConfig) -> list[tuple[int, Outcome, list[str]]]:
    """(row index, failed outcome, the columns its rule reads) for every row a failed expectation names."""
    by_rule = {check.name: check for check in checks(table, config)}
    broken = []
    for outcome in outcomes:
        if outcome.success:
            continue
        columns = [v for k, v in by_rule[outcome.expectation].kwargs if k.startswith("column") and isinstance(v, str)]
        broken += [(index, outcome, columns) for index in outcome.unexpected_index]
    return broken


def _quarantine_row(table: str, row: dict, outcome: Outcome, columns: list[str], run_id: str,
                    now: dt.datetime) -> dict:
    key = contract(table).primary_key
    return {"table_name": table, "rule": outcome.expectation, "severity": outcome.severity, "run_id": run_id,
            "row_key": json.dumps({k: row.get(k) for k in key}, default=str, sort_keys=True),
            "reason": f"{outcome.expectation} ({outcome.expectation_type}): "
                      + ", ".join(f"{c}={row.get(c)!r}" for c in columns),
            "row": json.dumps({k: v for k, v in row.items() if k != RETRACTED}, default=str, sort_keys=True),
            "first_seen": now, "last_seen": now}
