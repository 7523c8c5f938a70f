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
import dataclasses
from dataclasses import dataclass, field

from schemas.contracts import contract, contracts
from transforms.dq_alerts import Alerter, failing_now
from transforms.dq_checkpoint import checkpoint, result_rows
from transforms.dq_gate import gate, gate_arrow
from transforms.dq_suites import CHECKPOINT, Outcome, QualityConfig, build_data_docs, surely_passing

log = logging.getLogger("journeys.quality")
NOT_VALIDATED = ("quarantine", "dq_results", "channel_spend")  # written by the gate itself, or by the user
GATE_CHUNK_ROWS = 200_000  # rows at once through Great Expectations, or to a warehouse that is not DuckDB
SCRATCH_MEMORY = "1GB"  # a scratch DuckDB's working memory for choosing the newest staged rows; it spills beyond


@dataclass(frozen=True)
class Landing:
    run_id: str
    outcomes: tuple[Outcome, ...]
    quarantined: int
    published: object | None  # where readers find it; None when a block failure held it back
    data_docs: str | None
    seconds: dict
    landed: dict = field(default_factory=dict)  # {table: rows landed}

    @property
    def blocked(self) -> list[Outcome]:
        return blocking(self.outcomes)

    @property
    def warned(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success and o not in self.blocked]


def blocking(outcomes) -> list[Outcome]:
    """Failed block-severity expectations of the checkpoint: they hold publishing back."""
    return [o for o in outcomes if o.stage == CHECKPOINT and not o.success and o.severity == "block"]


def merged(outcomes: list[Outcome]) -> list[Outcome]:
    """One outcome per table and expectation from those of a table's chunks: passed only where every chunk passed."""
    by_rule: dict = {}
    for outcome in outcomes:
        by_rule.setdefault((outcome.table, outcome.stage, outcome.expectation), []).append(outcome)
    combined = []
    for parts in by_rule.values():
        shown = next((o for o in parts if not o.success), parts[0])
        total = lambda name: (None if any(getattr(o, name) is None for o in parts)
                              else sum(getattr(o, name) for o in parts))
        combined.append(parts[0] if len(parts) == 1 else dataclasses.replace(
            shown, success=all(o.success for o in parts), unexpected_count=total("unexpected_count"),
            element_count=total("element_count"), unexpected_index=()))
    return combined


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
        self.step = "commit"  # the landing's step under way: commit (the gate's included), checkpoint or publish

    def land(self, rows_by_table: dict[str, list[dict]], offsets: dict | None = None,
             run_id: str | None = None) -> Landing:
        """Rows held in memory (a stream's flush) through the row gate, then one commit of what passed."""
        self.step = "commit"  # the gate's failures count as the commit's
        run_id = run_id or new_run_id(self.run_kind)
        now = dt.datetime.now(dt.timezone.utc)
        started = time.perf_counter()
        passed: dict[str, list[dict]] = {}
        quarantined: list[dict] = []
        gate_outcomes: list[Outcome] = []
        for table, rows in rows_by_table.items():
            checked = (gate(table, rows, run_id, now, self.config) if table not in NOT_VALIDATED and rows else None)
            passed[table] = rows if checked is None else checked.passed
            if checked is not None:
                quarantined += checked.quarantined
                gate_outcomes += checked.outcomes
        seconds = {"row_gate": time.perf_counter() - started}
        return self._commit_and_check(passed, quarantined, gate_outcomes, {t: len(r) for t, r in passed.items()},
                                      offsets, run_id, now, seconds)

    def land_staged(self, files_by_table: dict[str, list[str]], offsets: dict | None = None,
                    run_id: str | None = None, spill_dir: str | None = None) -> Landing:
        """As land(), from staging files (transforms/staging.py): per table the newest row of each primary key,
        chosen by DuckDB into a temporary table (StagedRows), where the row gate checks it with one query; only
        when a row may break a rule do its chunks of GATE_CHUNK_ROWS go through Great Expectations. A DuckDB
        warehouse does this in its own connection; for another one a scratch DuckDB does (spilling to `spill_dir`)
        and the warehouse takes the rows that passed as Arrow chunks."""
        import duckdb

        from transforms.staging import StagedRows

        self.step = "commit"
        connection = getattr(self.warehouse, "connection", None)
        scratch = None
        if not isinstance(connection, duckdb.DuckDBPyConnection):
            connection = scratch = duckdb.connect()
            scratch.execute("SET TimeZone = 'UTC'")
            scratch.execute(f"SET memory_limit = '{SCRATCH_MEMORY}'")
            if spill_dir:
                scratch.execute("SET temp_directory = ?", [spill_dir])
        run_id = run_id or new_run_id(self.run_kind)
        now = dt.datetime.now(dt.timezone.utc)
        seconds = {"stage": 0.0, "row_gate": 0.0}
        staged: dict = {}
        quarantined: list[dict] = []
        gate_outcomes: list[Outcome] = []
        try:
            for table, files in files_by_table.items():
                started = time.perf_counter()
                staged[table] = rows = StagedRows(connection, table, files, GATE_CHUNK_ROWS)
                seconds["stage"] += time.perf_counter() - started
                if table in NOT_VALIDATED:
                    continue
                started = time.perf_counter()
                clean = surely_passing(table, "rows", rows.first_row, rows.relation(retracted=False), self.config)
                if clean is not None:
                    gate_outcomes += clean
                else:
                    held = []
                    for chunk in rows.chunks(retracted=False):
                        checked = gate_arrow(table, chunk, run_id, now, self.config)
                        quarantined += checked.quarantined
                        gate_outcomes += checked.outcomes
                        held += [checked.held] if checked.held is not None else []
                    for rows_held in held:
                        rows.drop(rows_held)
                seconds["row_gate"] += time.perf_counter() - started
            landed = {table: rows.count() for table, rows in staged.items()}
            return self._commit_and_check(staged, quarantined, gate_outcomes, landed, offsets, run_id, now, seconds)
        finally:
            for rows in staged.values():
                rows.close()
            if scratch is not None:
                scratch.close()

    def _commit_and_check(self, rows_by_table: dict, quarantined: list[dict], gate_outcomes: list[Outcome],
                          landed: dict, offsets: dict | None, run_id: str, now: dt.datetime, seconds: dict) -> Landing:
        """One commit of the tables' rows that passed the gate, the quarantined ones, the gate's results and the
        offsets; then the checkpoint."""
        # The gate records failures, and the first pass after one (so the latest result says what fails now)
        recorded = [o for o in merged(gate_outcomes)
                    if not o.success or (o.table, o.stage, o.expectation) in self.alerter.failing]
        started = time.perf_counter()
        self.warehouse.commit({**rows_by_table, "quarantine": quarantined,
                               "dq_results": result_rows(recorded, run_id, self.run_kind, now)}, offsets)
        seconds["commit"] = time.perf_counter() - started
        return dataclasses.replace(
            self._check(run_id, now, merged(gate_outcomes), len(quarantined),
                        [t for t, n in landed.items() if n and t not in NOT_VALIDATED], seconds), landed=landed)

    def validate(self, tables: list[str], run_id: str | None = None) -> Landing:
        """The checkpoint alone, on what the warehouse holds now (journeys validate)."""
        run_id = run_id or new_run_id(self.run_kind)
        return self._check(run_id, dt.datetime.now(dt.timezone.utc), [], 0, tables, {}, after_landing=False)

    def _check(self, run_id, now, gate_outcomes, quarantined, touched, seconds, after_landing=True) -> Landing:
        self.step = "checkpoint"
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
        self.step = "publish"
        started = time.perf_counter()
        published = None if blocked or self.run_kind == "validate" else self.warehouse.publish()
        seconds["publish"] = time.perf_counter() - started
        if blocked and self.run_kind != "validate":
            log.error("run %s: block-severity expectations failed; not published (readers keep the last good "
                      "snapshot): %s", run_id, ", ".join(f"{o.table}.{o.expectation}" for o in blocked))
        log.info("run %s: %d expectations, %d failed, %d rows quarantined; %s", run_id, len(every),
                 sum(not o.success for o in every), quarantined,
                 ", ".join(f"{step.replace('_', ' ')} {took:.2f} s" for step, took in seconds.items()))
        return Landing(run_id, tuple(every), quarantined, published, docs, seconds)
