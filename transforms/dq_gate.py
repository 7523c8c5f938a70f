"""The row gate: a batch of one table's rows, validated before it lands; rows that break a row-level rule go to
`quarantine` (with the rule and the offending values) instead of the table."""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from schemas.contracts import RETRACTED, contract
from transforms.dq_suites import Outcome, QualityConfig, checks, validate


@dataclass(frozen=True)
class Gated:
    passed: list[dict]
    quarantined: list[dict]  # quarantine rows
    outcomes: list[Outcome]


def row_frame(table: str, rows: list[dict]):
    import pandas as pd

    columns = [c.name for c in contract(table).columns]
    return pd.DataFrame.from_records([{name: row.get(name) for name in columns} for row in rows], columns=columns)


def gate(table: str, rows: list[dict], run_id: str, now: dt.datetime,
         config: QualityConfig = QualityConfig()) -> Gated:
    """Split `rows` into those that land and quarantine rows. Retractions always pass: they only delete."""
    checked = [row for row in rows if not row.get(RETRACTED)]
    if not checked:
        return Gated(list(rows), [], [])
    outcomes = validate(table, "rows", row_frame(table, checked), config)
    by_rule = {check.name: check for check in checks(table, config)}
    key = contract(table).primary_key
    held: set[int] = set()
    quarantined = []
    for outcome in outcomes:
        if outcome.success:
            continue
        columns = [v for k, v in by_rule[outcome.expectation].kwargs if k.startswith("column") and isinstance(v, str)]
        for index in outcome.unexpected_index:
            row = checked[index]
            held.add(index)
            quarantined.append({
                "table_name": table, "rule": outcome.expectation, "severity": outcome.severity, "run_id": run_id,
                "row_key": json.dumps({k: row.get(k) for k in key}, default=str, sort_keys=True),
                "reason": f"{outcome.expectation} ({outcome.expectation_type}): "
                          + ", ".join(f"{c}={row.get(c)!r}" for c in columns),
                "row": json.dumps({k: v for k, v in row.items() if k != RETRACTED}, default=str, sort_keys=True),
                "first_seen": now, "last_seen": now})
    passed = [row for index, row in enumerate(checked) if index not in held]
    return Gated(passed + [row for row in rows if row.get(RETRACTED)], quarantined, outcomes)
