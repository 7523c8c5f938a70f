"""Validated landing: every commit of the backfill and the stream goes through here.

1. Row gate (transforms/dq_gate.py): each table's batch is validated; failing rows go to `quarantine`.
2. One commit: the rows that passed, the quarantined ones, the gate's results and the source offsets.
3. Checkpoint (transforms/dq_checkpoint.py): every table rule (freshness and the dead-letter rate must be watched
   even while their tables are quiet) and the tables this commit touched: validated whole after a backfill; after a
   streaming flush only their column types, since the row gate already checked the rows it landed and a flush must
   not read whole tables. The results land in `dq_results`.
4. Alerts (transforms/dq_alerts.py) for incidents that start now; Data Docs when configured.
5. Publish, unless a `block` expectation of the checkpoint failed: then readers keep the last good snapshot.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass

from schemas.contracts import contract, contracts
from transforms.dq_alerts import Alerter, failing_now
from transforms.dq_checkpoint import checkpoint, result_rows
from transforms.dq_gate import gate
from transforms.dq_suites import CHECKPOINT, Outcome, QualityConfig, build_data_docs

log = logging.getLogger("journeys.quality")
NOT_VALIDATED = ("quarantine", "dq_results", "channel_spend")  # written by the gate itself, or by the user


@dataclass(frozen=True)
class Landing:
    run_id: str
    outcomes: tuple[Outcome, ...]
    quarantined: int
    published: object | None  # where readers find it; None when a block failure held it back
    data_docs: str | None
    seconds: dict

    @property
    def blocked(self) -> list[Outcome]:
        return blocking(self.outcomes)

    @property
    def warned(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success and o not in self.blocked]


def blocking(outcomes) -> list[Outcome]:
    """Failed block-severity expectations of the checkpoint: they hold publishing back."""
    return [o for o in outcomes if o.stage == CHECKPOINT and not o.success and o.severity == "block"]


def new_run_id(kind: str) -> str:
    return f"{kind}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def validated_tables() -> list[str]:
    return [name for name in contracts() if name not in NOT_VALIDATED]


class ValidatedLanding:
    def __init__(self, warehouse, config: QualityConfig, run_kind: str, record: bool = True):
        self.warehouse = warehouse
        self.config = config
        self.run_kind = run_kind
        self.record = record  # False: a read-only warehouse, results are returned but not stored
        self.alerter = Alerter(config, failing_now(warehouse))

    def land(self, rows_by_table: dict[str, list[dict]], offsets: dict | None = None,
             run_id: str | None = None) -> Landing:
        run_id = run_id or new_run_id(self.run_kind)
        now = dt.datetime.now(dt.timezone.utc)
        seconds = {}
        started = time.perf_counter()
        landing: dict[str, list[dict]] = {}
        quarantined: list[dict] = []
        gate_outcomes: list[Outcome] = []
        for table, rows in rows_by_table.items():
            if table in NOT_VALIDATED or not rows:
                landing[table] = rows
                continue
            gated = gate(table, rows, run_id, now, self.config)
            landing[table] = gated.passed
            quarantined += gated.quarantined
            gate_outcomes += gated.outcomes
        seconds["row_gate"] = time.perf_counter() - started
        # The gate records failures, and the first pass after one (so the latest result says what fails now).
        recorded = [o for o in gate_outcomes if not o.success or (o.table, o.stage, o.expectation) in self.alerter.failing]
        self.warehouse.commit({**landing, "quarantine": quarantined,
                               "dq_results": result_rows(recorded, run_id, self.run_kind, now)}, offsets)
        return self._check(run_id, now, gate_outcomes, len(quarantined), [t for t, r in landing.items() if r
                                                                           and t not in NOT_VALIDATED], seconds)

    def validate(self, tables: list[str], run_id: str | None = None) -> Landing:
        """The checkpoint alone, on what the warehouse holds now (journeys validate)."""
        run_id = run_id or new_run_id(self.run_kind)
        return self._check(run_id, dt.datetime.now(dt.timezone.utc), [], 0, tables, {}, after_landing=False)

    def _check(self, run_id, now, gate_outcomes, quarantined, touched, seconds, after_landing=True) -> Landing:
        started = time.perf_counter()
        scope = "after_gate" if after_landing and self.run_kind == "stream" else "all"
        outcomes = checkpoint(self.warehouse, touched, self.config, scope)
        if after_landing:
            quiet = [t for t in validated_tables() if t not in touched and contract(t).table_rules]
            outcomes += checkpoint(self.warehouse, quiet, self.config, "rules")
        seconds["checkpoint"] = time.perf_counter() - started
        if self.record:
            self.warehouse.commit({"dq_results": result_rows(outcomes, run_id, self.run_kind, now)})
        every = [*gate_outcomes, *outcomes]
        incidents = self.alerter.new_incidents(every)
        docs = None
        if self.config.data_docs_dir and (incidents or self.run_kind != "stream"):
            docs = build_data_docs(self.config.data_docs_dir).as_uri()
        self.alerter.alert(incidents, run_id, docs)
        blocked = blocking(outcomes)
        published = None if blocked or self.run_kind == "validate" else self.warehouse.publish()
        if blocked and self.run_kind != "validate":
            log.error("run %s: block-severity expectations failed; not published (readers keep the last good "
                      "snapshot): %s", run_id, ", ".join(f"{o.table}.{o.expectation}" for o in blocked))
        log.info("run %s: %d expectations, %d failed, %d rows quarantined; row gate %.2f s, checkpoint %.2f s",
                 run_id, len(every), sum(not o.success for o in every), quarantined, seconds.get("row_gate", 0.0),
                 seconds["checkpoint"])
        return Landing(run_id, tuple(every), quarantined, published, docs, seconds)
