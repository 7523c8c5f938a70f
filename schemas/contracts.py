"""Output-table contracts (schemas/tables/*.json): one per table, the single source of every derived schema.

A contract names the table, documents it and each column, and gives its primary key (so re-runs and corrections
upsert), partitioning and clustering, and its data-quality rules beyond the columns' own (`quality`). From it come
the DuckDB DDL, the BigQuery schema and the Avro schema here, and the Great Expectations suites
(transforms/dq_suites.py); none of them is written by hand.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

TABLES_DIR = Path(__file__).parent / "tables"
TABLES_DOC = Path(__file__).parent / "TABLES.md"  # tables_markdown(), committed for readers of the repo
VIEWS_DIR = Path(__file__).parent / "views"  # BI views over the tables, in the SQL DuckDB and BigQuery share
# A row carrying RETRACTED=True removes the stored row with its primary key: an aggregate whose every contribution
# was corrected away must disappear, or the table would depend on how the corrections happened to arrive.
RETRACTED = "_retracted"
TYPES = ("string", "int", "float", "bool", "timestamp", "date", "decimal", "bytes")
SEVERITIES = ("warn", "block")  # warn: recorded and alerted; block: also holds back publishing
_DECIMAL = re.compile(r"^decimal\((\d+),\s*(\d+)\)$")


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool
    doc: str
    accepted_values: tuple | None = None
    min: float | None = None
    max: float | None = None
    severity: str = "block"  # of the checks derived from this column (not null, accepted values, range)
    pseudonymous: bool = False  # holds keyed pseudonyms of personal ids (transforms/pseudonymise.py), never the ids
    private: bool = False  # raw input that may hold personal data: only the writer's private store keeps it

    @property
    def decimal(self) -> tuple[int, int] | None:
        match = _DECIMAL.match(self.type)
        return (int(match[1]), int(match[2])) if match else None

    @property
    def base_type(self) -> str:
        return "decimal" if self.decimal else self.type


@dataclass(frozen=True)
class RowRule:
    """Each row: column_a >= at_least. Rows that break it are quarantined before they land."""
    name: str
    doc: str
    column_a: str
    at_least: str
    severity: str = "block"


@dataclass(frozen=True)
class TableRule:
    """A query over the landed tables (DuckDB SQL) giving one `value` per group (or one in all); each must lie in
    [min, max]. A bound may be {"param": name}, a setting of the run (QualityConfig)."""
    name: str
    doc: str
    query: str
    min: float | dict | None = None
    max: float | dict | None = None
    severity: str = "block"


@dataclass(frozen=True)
class Contract:
    table: str
    doc: str
    primary_key: tuple[str, ...]
    partition_by: str | None
    cluster_by: tuple[str, ...]
    columns: tuple[Column, ...]
    keep_on_update: tuple[str, ...] = ()  # columns an upsert leaves as first written (e.g. first_seen)
    # Rows of one group (e.g. an order's credits per model) come as a whole, with a revision: landing a group
    # replaces its stored rows of other revisions, so a shorter path now leaves no rows of a longer one behind.
    replace_group: tuple[str, ...] = ()
    row_rules: tuple[RowRule, ...] = ()
    table_rules: tuple[TableRule, ...] = ()
    # The column each row of a group carries its group's row count in: a writer lands a group only when all its
    # rows of one revision are in hand, however they were split on the way.
    group_size: str | None = None
    # Whether a stored group is replaced only by a revision at least as high (revisions that order emissions: an
    # order's facts only grow), or by whatever lands last (a window's refit on other paths).
    newer_revision_only: bool = False

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def updated_columns(self) -> tuple[str, ...]:
        """What an upsert of an existing key overwrites: every column but the key and keep_on_update."""
        return tuple(c.name for c in self.columns if c.name not in (*self.primary_key, *self.keep_on_update))

    # --- derived schemas -----------------------------------------------------------------------------------------
    @property
    def private_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.private)

    def duckdb_ddl(self, private_store: str | None = None) -> str:
        """The table, without a PRIMARY KEY: the warehouse's commit keeps the key unique (duckdb_warehouse.py says
        why DuckDB does not index it). With `private_store` (a database name): the table of its private columns in
        that database, by the primary key (few rows: an index is cheap, and it lets a replayed commit replace)."""
        columns = [c for c in self.columns if not private_store or c.name in (*self.primary_key, *self.private_columns)]
        lines = [f'  "{c.name}" {_duckdb_type(c)}{"" if c.nullable else " NOT NULL"}' for c in columns]
        if private_store:
            lines.append("  PRIMARY KEY (" + ", ".join(f'"{k}"' for k in self.primary_key) + ")")
        name = f'{private_store}."{self.table}"' if private_store else f'"{self.table}"'
        return f"CREATE TABLE IF NOT EXISTS {name} (\n" + ",\n".join(lines) + "\n)"

    def duckdb_added_columns(self, existing: set[str]) -> list[str]:
        """ALTER TABLE statements that give a table created by an earlier contract the columns added since (a
        contract only adds nullable columns: the rows landed before have none of them)."""
        return [f'ALTER TABLE "{self.table}" ADD COLUMN "{c.name}" {_duckdb_type(c)}'
                for c in self.columns if c.name not in existing]

    def bigquery_schema(self) -> list:
        from google.cloud.bigquery import SchemaField

        bq = {"string": "STRING", "int": "INT64", "float": "FLOAT64", "bool": "BOOL", "timestamp": "TIMESTAMP",
              "date": "DATE", "bytes": "BYTES"}
        fields = []
        for c in self.columns:
            mode = "NULLABLE" if c.nullable else "REQUIRED"
            if c.decimal:
                fields.append(SchemaField(c.name, "NUMERIC", mode=mode, description=c.doc,
                                          precision=c.decimal[0], scale=c.decimal[1]))
            else:
                fields.append(SchemaField(c.name, bq[c.type], mode=mode, description=c.doc))
        return fields

    def arrow_schema(self):
        import pyarrow as pa

        arrow = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
                 "timestamp": pa.timestamp("us", tz="UTC"), "date": pa.date32(), "bytes": pa.binary()}
        return pa.schema([pa.field(c.name, pa.decimal128(*c.decimal) if c.decimal else arrow[c.type],
                                   nullable=c.nullable) for c in self.columns])

    def avro_schema(self) -> dict:
        avro = {"string": "string", "int": "long", "float": "double", "bool": "boolean",
                "timestamp": {"type": "long", "logicalType": "timestamp-micros"},
                "date": {"type": "int", "logicalType": "date"}, "bytes": "bytes"}
        fields = []
        for c in self.columns:
            kind = ({"type": "bytes", "logicalType": "decimal", "precision": c.decimal[0], "scale": c.decimal[1]}
                    if c.decimal else avro[c.type])
            fields.append({"name": c.name, "type": ["null", kind] if c.nullable else kind, "doc": c.doc,
                           **({"default": None} if c.nullable else {})})
        return {"type": "record", "name": self.table, "namespace": "customer_journeys.tables", "doc": self.doc,
                "fields": fields}

    def markdown(self) -> str:
        """The table's documentation for BI users: what it holds, its key and layout, its columns, its checks."""
        def cell(text) -> str:
            return str(text).replace("|", "\\|").replace("\n", " ")

        layout = [f"Primary key: {', '.join(f'`{k}`' for k in self.primary_key)}.",
                  f"Partitioned by: {f'`{self.partition_by}`' if self.partition_by else '—'}.",
                  f"Clustered by: {', '.join(f'`{c}`' for c in self.cluster_by) or '—'}."]
        if self.keep_on_update:
            layout.append(f"Kept as first written on an update: {', '.join(f'`{c}`' for c in self.keep_on_update)}.")
        if self.replace_group:
            layout.append(f"Rows of one {', '.join(f'`{c}`' for c in self.replace_group)} land and are replaced as "
                          f"a whole (`{self.group_size}` rows of one `revision`)"
                          + (", never by a lower revision." if self.newer_revision_only else "."))
        rows = [f"### `{self.table}`", "", self.doc, "", " ".join(layout), "",
                "| column | type | null | description | checks |", "|---|---|---|---|---|"]
        for c in self.columns:
            checks = [f"one of {', '.join(map(str, c.accepted_values))}" if c.accepted_values else "",
                      f">= {c.min}" if c.min is not None else "", f"<= {c.max}" if c.max is not None else ""]
            checks = "; ".join(check for check in checks if check)
            marks = " (pseudonymous)" if c.pseudonymous else " (private)" if c.private else ""
            rows.append(f"| `{c.name}` | {c.type}{marks} | "
                        f"{'yes' if c.nullable else 'no'} | {cell(c.doc)} | "
                        f"{cell(checks + f' ({c.severity})' if checks else '')} |")
        rules = [(r.name, r.doc, r.severity) for r in (*self.row_rules, *self.table_rules)]
        if rules:
            rows += ["", "Quality rules beyond the columns':", ""]
            rows += [f"- `{name}` ({severity}): {doc}" for name, doc, severity in rules]
        return "\n".join(rows)


def _duckdb_type(column: Column) -> str:
    duck = {"string": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN", "timestamp": "TIMESTAMPTZ",
            "date": "DATE", "bytes": "BLOB"}
    return f"DECIMAL({column.decimal[0]}, {column.decimal[1]})" if column.decimal else duck[column.type]


def tables_markdown() -> str:
    """schemas/TABLES.md: every table's documentation and the BI views, generated from the contracts."""
    parts = ["# Output tables", "",
             "Generated from the contracts in `schemas/tables/` by `journeys docs`; do not edit by hand. "
             "DuckDB types, BigQuery types, Avro and the Great Expectations suites derive from the same contracts. "
             "Timestamps are UTC; money columns are in the row's `currency`.", ""]
    for table in contracts().values():
        parts += [table.markdown(), ""]
    parts += ["## Views", "", "Shared SQL over the tables, created in DuckDB and BigQuery alike:", ""]
    for name, query in views().items():
        summary = " ".join(line.lstrip("- ").strip() for line in query.splitlines() if line.startswith("--"))
        parts.append(f"- `{name}`: {summary}")
    return "\n".join(parts) + "\n"


def _load(path: Path) -> Contract:
    raw = json.loads(path.read_text())
    columns = tuple(Column(c["name"], c["type"], c["nullable"], c["doc"],
                           tuple(c["accepted_values"]) if "accepted_values" in c else None,
                           c.get("min"), c.get("max"), c.get("severity", "block"), c.get("pseudonymous", False),
                           c.get("private", False))
                    for c in raw["columns"])
    quality = raw.get("quality", {})
    contract = Contract(raw["table"], raw["doc"], tuple(raw["primary_key"]), raw.get("partition_by"),
                        tuple(raw.get("cluster_by", ())), columns, tuple(raw.get("keep_on_update", ())),
                        tuple(raw.get("replace_group", ())),
                        tuple(RowRule(**rule) for rule in quality.get("row_rules", ())),
                        tuple(TableRule(**rule) for rule in quality.get("table_rules", ())),
                        raw.get("group_size"), raw.get("newer_revision_only", False))
    _check(contract)
    return contract


def _check(contract: Contract) -> None:
    names = [c.name for c in contract.columns]
    problems = []
    if len(set(names)) != len(names):
        problems.append("duplicate column names")
    for c in contract.columns:
        if c.base_type not in TYPES:
            problems.append(f"{c.name}: unknown type {c.type}")
        if not c.doc.strip():
            problems.append(f"{c.name}: no description")
    for key in contract.primary_key:
        if key not in names or contract.column(key).nullable:
            problems.append(f"primary key {key} must be a non-null column")
    for c in contract.columns:
        if c.private and (not c.nullable or c.name in contract.primary_key):
            problems.append(f"{c.name}: a private column is nullable and no key (readers see NULL)")
    for name in (contract.partition_by, *contract.cluster_by, *contract.keep_on_update, *contract.replace_group,
                 *(column for rule in contract.row_rules for column in (rule.column_a, rule.at_least))):
        if name and name not in names:
            problems.append(f"{name} is not a column")
    if contract.replace_group and "revision" not in names:
        problems.append("replace_group needs a revision column: a group is replaced by a newer revision")
    if bool(contract.replace_group) != bool(contract.group_size):
        problems.append("replace_group and group_size go together: a group is replaced only whole")
    if contract.group_size and contract.group_size not in names:
        problems.append(f"group_size {contract.group_size} is not a column")
    for named in (*contract.columns, *contract.row_rules, *contract.table_rules):
        if named.severity not in SEVERITIES:
            problems.append(f"{named.name}: severity {named.severity} is not one of {', '.join(SEVERITIES)}")
    if problems:
        raise ValueError(f"contract {contract.table}: " + "; ".join(problems))


@cache
def contracts() -> dict[str, Contract]:
    return {c.table: c for c in map(_load, sorted(TABLES_DIR.glob("*.json")))}


def contract(table: str) -> Contract:
    try:
        return contracts()[table]
    except KeyError:
        raise KeyError(f"no contract for table {table!r}; known: {', '.join(contracts())}") from None


@cache
def views() -> dict[str, str]:
    """{view name: its query}, where `{tables}` stands for the tables' qualifier ("" in DuckDB, `project.dataset`.
    in BigQuery)."""
    return {path.stem: path.read_text() for path in sorted(VIEWS_DIR.glob("*.sql"))}
