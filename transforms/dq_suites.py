"""Great Expectations suites derived from the contracts (schemas/tables/): one per table and stage, none by hand.

From each column: not null (unless nullable), accepted values, range. From the contract's `quality`: row rules
(column A ≥ column B) and table rules (a query per rule, its `value`s within bounds). On the landed table also:
the primary key unique and every column of its contract's type.

Two stages use them: the row gate runs the row-level expectations on a batch before it lands (transforms/dq_gate.py)
and the checkpoint runs everything on the landed tables (transforms/dq_checkpoint.py). A frame that one SQL query
shows clean skips Great Expectations' own run (`surely_passing`). Great Expectations is imported on first use (it
costs seconds) and validates whole batches (pandas frames), never single records.
"""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from schemas.contracts import TableRule, contract
from transforms.secret import Secret

ROW_GATE, CHECKPOINT = "row_gate", "checkpoint"
WEBHOOK_ENV = "JOURNEYS_ALERT_WEBHOOK"
_GX_SEVERITY = {"warn": "warning", "block": "critical"}
SAMPLE = 5  # offending values quoted in an observed value


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the parametrised rules, and where results and alerts go. The webhook URL is a secret: from the
    environment or a file, never the command line, never logged, never in this config's repr or pickle."""
    max_event_age_hours: float = 24.0
    max_dead_letter_rate: float = 0.05
    data_docs_dir: str | None = None  # Data Docs HTML is written here when set
    webhook_url: Secret | None = None  # Slack-compatible JSON alerts (JOURNEYS_ALERT_WEBHOOK)
    # Great Expectations' own actions (Slack, email, Teams, …) as JSON: a list of action configs, secrets written as
    # ${ENV_VAR} for GX to substitute where the action runs (--gx-actions-file).
    gx_actions: str | None = None

    def bound(self, value):
        return getattr(self, value["param"]) if isinstance(value, dict) else value

    @classmethod
    def from_env(cls, **overrides) -> "QualityConfig":
        webhook = os.environ.get(WEBHOOK_ENV)
        return cls(**{"webhook_url": Secret(env=WEBHOOK_ENV, value=webhook) if webhook else None,
                      **{k: v for k, v in overrides.items() if v is not None}})


@dataclass(frozen=True)
class Check:
    """One expectation of a table's suite: its rule name, stage, severity and how to build it."""
    name: str
    severity: str
    expectation: str  # the Great Expectations class, e.g. ExpectColumnValuesToNotBeNull
    kwargs: tuple
    row_level: bool  # also gates rows before landing
    rule: TableRule | None = field(default=None, compare=False)  # a table rule validates its own query's frame


@dataclass(frozen=True)
class Outcome:
    table: str
    stage: str
    expectation: str
    expectation_type: str
    success: bool
    severity: str
    observed_value: str | None
    unexpected_count: int | None
    element_count: int | None
    unexpected_index: tuple = field(default=(), compare=False)  # rows of the frame that broke it
    validation: tuple | None = field(default=None, compare=False, repr=False)  # GX's (definition, result): its actions


def checks(table: str, config: QualityConfig = QualityConfig()) -> list[Check]:
    c = contract(table)
    found = []
    for column in c.columns:
        if not column.nullable:
            found.append(Check(f"not_null:{column.name}", column.severity, "ExpectColumnValuesToNotBeNull",
                               (("column", column.name),), True))
        if column.accepted_values:
            found.append(Check(f"accepted_values:{column.name}", column.severity, "ExpectColumnValuesToBeInSet",
                               (("column", column.name), ("value_set", column.accepted_values)), True))
        if column.min is not None or column.max is not None:
            found.append(Check(f"range:{column.name}", column.severity, "ExpectColumnValuesToBeBetween",
                               (("column", column.name), ("min_value", column.min), ("max_value", column.max)),
                               True))
    for rule in c.row_rules:
        found.append(Check(rule.name, rule.severity, "ExpectColumnPairValuesAToBeGreaterThanB",
                           (("column_A", rule.column_a), ("column_B", rule.at_least), ("or_equal", True)), True))
    key = list(c.primary_key)
    found.append(Check("unique_key", "block", "ExpectCompoundColumnsToBeUnique" if len(key) > 1
                       else "ExpectColumnValuesToBeUnique",
                       (("column_list", tuple(key)),) if len(key) > 1 else (("column", key[0]),), False))
    found.append(Check("columns_match_contract", "block", "ExpectColumnPairValuesToBeEqual",
                       (("column_A", "contract_type"), ("column_B", "landed_type")), False))
    for rule in c.table_rules:
        found.append(Check(rule.name, rule.severity, "ExpectColumnValuesToBeBetween",
                           (("column", "value"), ("min_value", config.bound(rule.min)),
                            ("max_value", config.bound(rule.max))), False, rule))
    return found


class _Suites:
    """One ephemeral Great Expectations context per process, its suites built once per table, stage and config."""

    def __init__(self):
        self.lock = threading.Lock()
        self.context = None
        self.definitions: dict = {}
        self.docs_sites: set = set()
        self.unrun: dict = {}  # suites of the frames surely_passing let through: {name: checks}

    def gx(self):
        if self.context is None:
            os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            self.context = gx.get_context(mode="ephemeral")
            self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
            self.source = self.context.data_sources.add_pandas("journeys")
        return self.context

    def definition(self, name: str, expectations: list[Check]):
        """The validation definition of one frame kind (`name`) with its expectations, made on first use."""
        import great_expectations as gx

        known = self.definitions.get(name)
        if known is not None:
            return known
        context = self.gx()
        asset = self.source.add_dataframe_asset(name)
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=[
            getattr(gx.expectations, check.expectation)(
                **{k: list(v) if isinstance(v, tuple) else v for k, v in check.kwargs}, severity=_GX_SEVERITY[check.severity],
                                                        meta={"rule": check.name})
            for check in expectations]))
        definition = context.validation_definitions.add(gx.ValidationDefinition(
            name=name, data=asset.add_batch_definition_whole_dataframe("whole"), suite=suite))
        self.definitions[name] = definition
        return definition


_SUITES = _Suites()


FRAME_KINDS = ("rows", "table", "types", "rule")


def _checks_for(table: str, kind: str, config: QualityConfig, rule: TableRule | None) -> list[Check]:
    every = checks(table, config)
    if kind == "rows":  # a batch before it lands
        return [c for c in every if c.row_level]
    if kind == "table":  # the landed table
        return [c for c in every if c.row_level or c.name == "unique_key"]
    if kind == "types":  # the landed table's columns: contract_type, landed_type per column
        return [c for c in every if c.name == "columns_match_contract"]
    return [c for c in every if c.rule == rule]


def _suite_name(table: str, kind: str, rule: TableRule | None, wanted: list[Check]) -> str:
    name = f"{table}.{kind}" + (f".{rule.name}" if rule else "")
    return name + f".{hash(tuple(wanted)) & 0xffffffff:x}"  # other thresholds make another suite


def validate(table: str, kind: str, frame, config: QualityConfig = QualityConfig(), *,
             rule: TableRule | None = None) -> list[Outcome]:
    """Validate one frame (see FRAME_KINDS) of `table` with the expectations for that kind of frame."""
    wanted = _checks_for(table, kind, config, rule)
    if not wanted:
        return []
    if kind in SMALL_FRAME_TYPES:
        clean = surely_passing_data(table, kind, frame, config, rule=rule, types=SMALL_FRAME_TYPES[kind])
        if clean is not None:
            return clean
    stage = ROW_GATE if kind == "rows" else CHECKPOINT
    with _SUITES.lock:
        definition = _SUITES.definition(_suite_name(table, kind, rule, wanted), wanted)
        result = definition.run(batch_parameters={"dataframe": frame}, result_format={"result_format": "COMPLETE"})
    by_rule = {check.name: check for check in wanted}
    outcomes = []
    for item in result.results:
        check = by_rule[item.expectation_config.meta["rule"]]
        details = item.result or {}
        if (item.exception_info or {}).get("raised_exception"):
            outcomes.append(Outcome(table, stage, check.name, item.expectation_config.type, False, check.severity,
                                    f"could not evaluate: {item.exception_info.get('exception_message')}",
                                    None, len(frame), validation=(definition, result)))
            continue
        outcomes.append(Outcome(table, stage, check.name, item.expectation_config.type, bool(item.success),
                                check.severity, _observed(check, details, frame), details.get("unexpected_count"),
                                details.get("element_count", len(frame)),
                                tuple(details.get("unexpected_index_list") or ()), (definition, result)))
    return outcomes


def surely_passing(table: str, kind: str, first_row, relation: str, config: QualityConfig = QualityConfig(), *,
                   rule: TableRule | None = None, types: dict[str, str] | None = None) -> list[Outcome] | None:
    """The outcomes Great Expectations gives a clean frame of `kind` ("rows": a batch at the row gate; "table": the
    landed table at the checkpoint; the checkpoint's small frames, whose columns' base types `types` gives) when one
    SQL query over `relation` shows it clean: no value out of its set or
    range, no pair out of order, no null or NaN where a rule compares, no key twice. None when a row might break an
    expectation: Great Expectations then validates the frame and names the rows. `first_row(sql)` runs DuckDB SQL
    and gives its one row. Great Expectations' run costs about a second a frame whatever its size, and reads a table
    whole into pandas; the query costs milliseconds, and a clean frame is the rule."""
    wanted = _checks_for(table, kind, config, rule)
    if not wanted:
        return []
    types = types or {c.name: c.base_type for c in contract(table).columns}
    suspects, keys = [], None
    for check in wanted:
        kwargs = dict(check.kwargs)
        if check.name == "unique_key":
            keys = ", ".join(_quoted(k) for k in kwargs.get("column_list") or (kwargs["column"],))
            continue
        suspect = _suspect_sql(check.expectation, kwargs, types)
        if suspect is None:
            return None
        suspects.append(f"({suspect})")
    distinct = f"(SELECT count(*) FROM (SELECT DISTINCT {keys} FROM {relation}))" if keys else "count(*)"
    rows, suspect_rows, distinct_keys = first_row(
        f"SELECT count(*), count(*) FILTER (WHERE {' OR '.join(suspects) or 'false'}), {distinct} FROM {relation}")
    if suspect_rows or distinct_keys != rows:
        return None
    with _SUITES.lock:  # its suite still shows in Data Docs
        _SUITES.unrun[_suite_name(table, kind, rule, wanted)] = wanted
    stage = ROW_GATE if kind == "rows" else CHECKPOINT
    return [Outcome(table, stage, check.name, _snake_case(check.expectation), True, check.severity, None, 0,
                    int(rows)) for check in wanted]  # a Python int, as GX gives: a numpy one is no JSON


# The checkpoint's small frames (a table's column types, a rule's values) and their columns' types: a stream checks
# them at every commit, and a Great Expectations run costs tenths of a second each where one query costs a millisecond.
SMALL_FRAME_TYPES = {"types": {"contract_type": "string", "landed_type": "string"}, "rule": {"value": "float"}}


_SCRATCH = threading.local()  # a DuckDB connection per thread: opening one costs more than the query


def surely_passing_data(table: str, kind: str, data, config: QualityConfig = QualityConfig(), *,
                        rule: TableRule | None = None, types: dict[str, str] | None = None) -> list[Outcome] | None:
    """surely_passing on a pandas frame or an Arrow table, queried in place by this thread's in-memory DuckDB."""
    scratch = getattr(_SCRATCH, "connection", None)
    if scratch is None:
        import duckdb

        scratch = _SCRATCH.connection = duckdb.connect()
    scratch.register("data", data)
    try:
        return surely_passing(table, kind, lambda sql: scratch.execute(sql).fetchone(), "data", config, rule=rule,
                              types=types)
    finally:
        scratch.unregister("data")


def _suspect_sql(expectation: str, kwargs: dict, types: dict[str, str]) -> str | None:
    """A DuckDB predicate true for every row that may break the expectation (and maybe some that do not); None for
    an expectation it does not know."""
    def number(column: str) -> str:
        quoted = _quoted(column)
        return f"{quoted} IS NULL OR isnan({quoted})" if types.get(column) == "float" else f"{quoted} IS NULL"

    if expectation == "ExpectColumnValuesToNotBeNull":
        return number(kwargs["column"])
    if expectation == "ExpectColumnValuesToBeInSet":
        values = ", ".join("'" + str(v).replace("'", "''") + "'" for v in kwargs["value_set"])
        return f"{_quoted(kwargs['column'])} NOT IN ({values})" if types.get(kwargs["column"]) == "string" else None
    if expectation == "ExpectColumnValuesToBeBetween":
        column, low, high = kwargs["column"], kwargs["min_value"], kwargs["max_value"]
        if types.get(column) not in ("int", "float"):
            return None
        quoted = _quoted(column)
        out = [f"isnan({quoted})"] if types[column] == "float" else []
        out += [f"{quoted} < {float(low)!r}"] if low is not None else []
        out += [f"{quoted} > {float(high)!r}"] if high is not None else []
        return " OR ".join(out) or "false"
    if expectation == "ExpectColumnPairValuesToBeEqual":
        a, b = _quoted(kwargs["column_A"]), _quoted(kwargs["column_B"])
        return f"{a} IS NULL OR {b} IS NULL OR {a} <> {b}"
    if expectation == "ExpectColumnPairValuesAToBeGreaterThanB" and kwargs.get("or_equal"):
        a, b = kwargs["column_A"], kwargs["column_B"]
        if {types.get(a), types.get(b)} - {"int", "float"}:
            return None
        return f"{number(a)} OR {number(b)} OR {_quoted(a)} < {_quoted(b)}"
    return None


def _quoted(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def _snake_case(expectation: str) -> str:
    """ExpectColumnValuesToNotBeNull → expect_column_values_to_not_be_null, the type Great Expectations reports."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", expectation).lower()


def _observed(check: Check, details: dict, frame) -> str | None:
    if check.rule is not None and len(frame) == 1:
        value = frame["value"].iloc[0]
        return None if value is None or value != value else f"{float(value):.6g}"
    unexpected = details.get("unexpected_index_list") or ()
    if not unexpected:
        return details.get("observed_value") and str(details["observed_value"])
    shown = []
    for index in list(unexpected)[:SAMPLE]:
        row = frame.loc[index] if not isinstance(index, dict) else None
        columns = [k for k, _ in check.kwargs if k.startswith("column")]
        if row is None:
            shown.append(str(index))
        elif check.rule is not None or check.name == "columns_match_contract":  # the whole row says which
            shown.append(", ".join(f"{k}={row[k]}" for k in frame.columns))
        else:
            shown.append(", ".join(f"{dict(check.kwargs)[k]}={row[dict(check.kwargs)[k]]}" for k in columns
                                   if isinstance(dict(check.kwargs)[k], str)) or str(index))
    more = len(unexpected) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def run_gx_actions(actions_json: str, table: str, failed: list[Outcome], run_id: str) -> None:
    """Great Expectations' own actions (as configured: Slack, email, …) on the validation results behind an
    incident's failures: one checkpoint result per incident, so GX's notifications are deduplicated like ours."""
    import json

    import great_expectations as gx
    from great_expectations.checkpoint.actions import ActionContext
    from great_expectations.checkpoint.checkpoint import CheckpointResult
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (ExpectationSuiteIdentifier,
                                                                             ValidationResultIdentifier)

    behind = {id(o.validation[1]): o.validation for o in failed if o.validation}
    if not behind:
        return
    with _SUITES.lock:
        _SUITES.gx()
        checkpoint = gx.Checkpoint(name=f"journeys.{table}", validation_definitions=[d for d, _ in behind.values()],
                                   actions=json.loads(actions_json))
        run = RunIdentifier(run_name=run_id)
        result = CheckpointResult(run_id=run, checkpoint_config=checkpoint, run_results={
            ValidationResultIdentifier(ExpectationSuiteIdentifier(name=d.suite.name), run, r.batch_id): r
            for d, r in behind.values()})
        context = ActionContext()
        for action in checkpoint.actions:
            context.update(action=action, action_result=action.run(checkpoint_result=result, action_context=context))


def build_data_docs(directory: str | Path) -> Path:
    """Render the validations of this process, and the suite of every frame it checked, as Data Docs HTML in
    `directory`; returns its index page."""
    directory = Path(directory).resolve()
    with _SUITES.lock:
        context = _SUITES.gx()
        site = f"journeys_{abs(hash(str(directory))):x}"
        if site not in _SUITES.docs_sites:
            context.add_data_docs_site(site_name=site, site_config={
                "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(directory)}})
            _SUITES.docs_sites.add(site)
        for name, wanted in _SUITES.unrun.items():
            _SUITES.definition(name, wanted)
        context.build_data_docs(site_names=[site])
    return directory / "index.html"
