"""StageTables: a backfill's table rows written to Parquet by the bundles that compute them, never gathered.

Each bundle writes its rows of a table to staging files (at most `rows_per_file` rows each, in the contract's
types) and passes on only their paths. One step then gathers the paths, a handful per bundle, and lands them
(ValidatedLanding.land_staged): per table, DuckDB picks the newest row of each primary key from the files into a
temporary table (StagedRows), spilling to disk as it needs; the row gate queries it there and the warehouse lands
what passed, in one transaction. A DuckDB warehouse does it all in its own connection, under its one memory limit;
another takes the rows from a scratch DuckDB a chunk at a time. No step holds a table in Python.

A retried bundle writes new files under new names; only the paths of the bundle that succeeded reach the commit.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from schemas.contracts import RETRACTED, contract
from transforms.duckdb_warehouse import arrow_batch, same_values

ORDER = "_order"  # a later firing (pane) of an updating table supersedes an earlier one


def retractable_schema(table: str) -> pa.Schema:
    """The contract's columns and whether the row is a retraction: what a warehouse's commit takes."""
    return contract(table).arrow_schema().append(pa.field(RETRACTED, pa.bool_()))


def staged_schema(table: str) -> pa.Schema:
    """A retractable row and its firing."""
    return retractable_schema(table).append(pa.field(ORDER, pa.int64()))


def retractable_batch(table: str, rows: list[dict]) -> pa.Table:
    """The rows in the contract's types, and whether each is a retraction (warehouses' commit takes it so)."""
    return arrow_batch(table, rows).append_column(
        RETRACTED, pa.array([bool(row.get(RETRACTED)) for row in rows], pa.bool_()))


def staged_batch(table: str, rows: list[dict], orders: list[int]) -> pa.Table:
    return retractable_batch(table, rows).append_column(ORDER, pa.array(orders, pa.int64()))


class _StageBundle(beam.DoFn):
    def __init__(self, table: str, directory: str, rows_per_file: int):
        self.table = table
        self.directory = directory
        self.rows_per_file = rows_per_file

    def start_bundle(self):
        self.rows, self.orders = [], []

    def process(self, row, pane=beam.DoFn.PaneInfoParam):
        self.rows.append(row)
        self.orders.append(pane.index)
        if len(self.rows) >= self.rows_per_file:
            yield self._write()

    def finish_bundle(self):
        if self.rows:
            yield WindowedValue(self._write(), MIN_TIMESTAMP, [GlobalWindow()])

    def _write(self) -> tuple[str, str]:
        import pyarrow.parquet as pq

        path = Path(self.directory) / self.table / f"{uuid.uuid4().hex}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(staged_batch(self.table, self.rows, self.orders), path)
        self.rows, self.orders = [], []
        return self.table, str(path)


class StageTables(beam.PTransform):
    """{table name: rows} → (table name, staging file path), one per file written."""

    def __init__(self, directory: str, rows_per_file: int = 100_000):
        super().__init__()
        self.directory = directory
        self.rows_per_file = rows_per_file

    def expand(self, tables):
        staged = []
        for name, rows in tables.items():
            # data_driven_attribution comes out of event-time windows: it leaves them before the paths meet (the
            # tables already in the global window skip the step: it costs a window object per row)
            if not isinstance(rows.windowing.windowfn, GlobalWindows):
                rows = rows | f"Unwindow{name}" >> beam.WindowInto(GlobalWindows())
            staged.append(rows | f"Stage{name}" >> beam.ParDo(_StageBundle(name, self.directory, self.rows_per_file)))
        return staged | "StagedFiles" >> beam.Flatten()


class StagedRows:
    """A table's newest staged row of each key (latest_staged_sql), contract columns and RETRACTED, held as a
    temporary table by a DuckDB connection: the writer's own when the warehouse is DuckDB (its commit lands them with
    one statement), a scratch one otherwise (the warehouse iterates this: Arrow chunks of `chunk_rows`)."""

    def __init__(self, connection, table: str, files: list[str], chunk_rows: int):
        self.connection = connection
        self.table = table
        self.chunk_rows = chunk_rows
        self.name = f"staged_{table}"
        connection.execute(f'CREATE OR REPLACE TEMP TABLE "{self.name}" AS {latest_staged_sql(table, files)}')

    def relation(self, retracted: bool | None = None) -> str:
        """SQL of the rows (None), of the retractions only (True) or of the rows to land (False)."""
        if retracted is None:
            return f'"{self.name}"'
        return f'(SELECT * FROM "{self.name}" WHERE {"" if retracted else "NOT "}coalesce("{RETRACTED}", false))'

    def first_row(self, sql: str) -> tuple:
        return self.connection.execute(sql).fetchone()

    def count(self) -> int:
        return self.first_row(f"SELECT count(*) FROM {self.relation()}")[0]

    def chunks(self, retracted: bool | None = None):
        """The rows as Arrow tables of retractable_schema, `chunk_rows` at a time. The connection runs nothing else
        until the last one is taken."""
        schema = retractable_schema(self.table)
        for batch in self.connection.execute(f"SELECT * FROM {self.relation(retracted)}").fetch_record_batch(
                self.chunk_rows):
            yield pa.Table.from_batches([batch]).cast(schema)

    __iter__ = chunks

    def drop(self, rows: pa.Table) -> None:
        """Removes the rows of these keys (the row gate's quarantined ones)."""
        if not rows.num_rows:
            return
        key = contract(self.table).primary_key
        self.connection.register("dropped", rows.select(list(key)))
        try:
            self.connection.execute(
                f'DELETE FROM "{self.name}" USING dropped WHERE {same_values(self.name, key, "dropped")}')
        finally:
            self.connection.unregister("dropped")

    def close(self) -> None:
        import duckdb

        try:
            self.connection.execute(f'DROP TABLE IF EXISTS "{self.name}"')
        except duckdb.Error:
            pass  # a connection a failure invalidated holds no temporary table; that failure is the one to tell


def latest_staged_sql(table: str, files: list[str]) -> str:
    """The newest staged row of each primary key, as warehouse.latest_rows picks it: the highest revision where the
    table has one, then the latest firing; in a table with a replace_group, only its group's highest revision."""
    table_contract = contract(table)
    names = {c.name for c in table_contract.columns}
    quoted = lambda columns: ", ".join(f'"{c}"' for c in columns)
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    source = f"read_parquet([{listed}])"
    if table_contract.replace_group:
        source = (f"(SELECT * FROM {source} QUALIFY revision = "
                  f"max(revision) OVER (PARTITION BY {quoted(table_contract.replace_group)}))")
    newest = ("revision DESC, " if "revision" in names else "") + f"{ORDER} DESC"
    return (f"SELECT * EXCLUDE ({ORDER}) FROM {source} QUALIFY row_number() OVER "
            f"(PARTITION BY {quoted(table_contract.primary_key)} ORDER BY {newest}) = 1")
