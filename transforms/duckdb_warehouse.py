"""The embedded warehouse: one DuckDB file, written by one process, read by BI tools through published snapshots.

DuckDB lets one process open a database file for writing and then no other process may open it, not even to
read. So the writer keeps its own file and, after the commits it chooses, publishes a consistent copy next to it
(written aside, then renamed over the old one). Readers open the published copy read-only; a rename never
disturbs a reader that still has the previous copy open.

Every commit is one transaction: the rows it upserts (by each table's primary key, from schemas/tables/) and the
source offsets they account for, so a restarted job resumes exactly where the stored rows end.
"""
from __future__ import annotations

import os
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from schemas.contracts import RETRACTED, contract, contracts, views

OFFSETS_DDL = """CREATE TABLE IF NOT EXISTS source_offsets (
  "topic" VARCHAR NOT NULL, "partition" BIGINT NOT NULL, "next_offset" BIGINT NOT NULL,
  "committed_at" TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY ("topic", "partition"))"""


class DuckDBWarehouse:
    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        if read_only:  # a reader of a published copy (journeys validate while a stream writes)
            self.connection = duckdb.connect(str(self.path), read_only=True)
            self.connection.execute("SET TimeZone = 'UTC'")
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = duckdb.connect(str(self.path))
        self.connection.execute("SET TimeZone = 'UTC'")
        for table in contracts().values():
            self.connection.execute(table.duckdb_ddl())
        self.connection.execute(OFFSETS_DDL)
        for name, query in views().items():
            self.connection.execute(f'CREATE OR REPLACE VIEW "{name}" AS {query.format(tables="")}')

    def commit(self, rows_by_table: dict[str, list[dict] | pa.Table],
               offsets: dict[tuple[str, int], int] | None = None) -> None:
        """Upsert the rows (delete the retracted ones) and advance the offsets, all or nothing. Offsets never move
        backwards. A table's rows come as dicts, or as an Arrow table of its contract's columns (and RETRACTED)."""
        con = self.connection
        con.execute("BEGIN TRANSACTION")
        try:
            for table, rows in rows_by_table.items():
                retracted, landing = _retracted_and_landing(table, rows)
                if landing is not None and contract(table).newer_revision_only:
                    landing = self._newer_groups(table, landing)
                for statements, batch in (((_delete_sql(table),), retracted),
                                          ((*_replace_groups_sql(table), _upsert_sql(table)), landing)):
                    if batch is not None and batch.num_rows:
                        # One columnar batch per table: executemany would insert row by row (10 ms each).
                        con.register("batch", batch)
                        try:
                            for sql in statements:
                                con.execute(sql)
                        finally:
                            con.unregister("batch")
            for (topic, partition), next_offset in (offsets or {}).items():
                con.execute("""INSERT INTO source_offsets (topic, "partition", next_offset) VALUES (?, ?, ?)
                               ON CONFLICT (topic, "partition") DO UPDATE SET
                                 next_offset = greatest(source_offsets.next_offset, excluded.next_offset),
                                 committed_at = now()""", [topic, partition, next_offset])
            con.execute("COMMIT")
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass  # a COMMIT that failed has ended the transaction already; its own error is the one to tell
            raise

    def _newer_groups(self, table: str, batch: pa.Table) -> pa.Table:
        """The rows of groups whose stored revision is not higher: an emission that reaches the warehouse after a
        newer one of its group (another bundle, another worker, a replay) leaves the newer one standing."""
        group = ", ".join(f'"{g}"' for g in contract(table).replace_group)
        self.connection.register("incoming", batch)
        try:
            return self.connection.execute(
                f'SELECT incoming.* FROM incoming LEFT JOIN (SELECT {group}, max(revision) AS stored_revision '
                f'FROM "{table}" GROUP BY ALL) AS stored USING ({group}) '
                f'WHERE stored_revision IS NULL OR incoming.revision >= stored_revision').fetch_arrow_table()
        finally:
            self.connection.unregister("incoming")

    def offsets(self) -> dict[tuple[str, int], int]:
        """Where each partition's next unprocessed record is, as of the last commit."""
        return {(topic, partition): offset for topic, partition, offset in
                self.connection.execute('SELECT topic, "partition", next_offset FROM source_offsets').fetchall()}

    def rows(self, table: str) -> list[dict]:
        """Every stored row of `table`, as Python values (Decimal, date, datetime)."""
        return self.connection.execute(f'SELECT * FROM "{table}"').fetch_arrow_table().to_pylist()

    def query_frame(self, sql: str):
        """A pandas frame of a DuckDB query over the tables (the data-quality checkpoint's reads)."""
        return self.connection.execute(sql).df()

    def landed_types(self, table: str) -> dict[str, str]:
        """{column: its type as DuckDB has it}."""
        return {row[0]: row[1] for row in self.connection.execute(f'DESCRIBE "{table}"').fetchall()}

    def publish(self, to: str | Path | None = None) -> Path:
        """A consistent copy for readers (default: `<name>.published.duckdb` beside the file), swapped in whole."""
        target = Path(to) if to else self.path.with_suffix(".published.duckdb")
        aside = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        aside.unlink(missing_ok=True)
        own = self.connection.execute("SELECT current_database()").fetchone()[0]
        self.connection.execute(f"ATTACH '{aside}' AS snapshot")
        try:
            self.connection.execute(f'COPY FROM DATABASE "{own}" TO snapshot')
        finally:
            self.connection.execute("DETACH snapshot")
        os.replace(aside, target)
        return target

    def close(self) -> None:
        self.connection.close()


def _retracted_and_landing(table: str, rows) -> tuple[pa.Table | None, pa.Table | None]:
    if isinstance(rows, pa.Table):
        if RETRACTED not in rows.column_names:
            return None, rows
        flags = rows.column(RETRACTED).fill_null(False)
        return (rows.filter(flags).drop_columns([RETRACTED]),
                rows.filter(pc.invert(flags)).drop_columns([RETRACTED]))
    retracted = [row for row in rows if row.get(RETRACTED)]
    landing = [row for row in rows if not row.get(RETRACTED)]
    return (arrow_batch(table, retracted) if retracted else None), (arrow_batch(table, landing) if landing else None)


def arrow_batch(table: str, rows: list[dict]) -> pa.Table:
    """The rows as an Arrow table of the contract's types; money given as a float becomes an exact decimal."""
    table_contract = contract(table)
    decimals = {c.name: Decimal(1).scaleb(-c.decimal[1]) for c in table_contract.columns if c.decimal}
    if decimals:
        exact = lambda value, unit: (Decimal(str(value)).quantize(unit, ROUND_HALF_UP)
                                     if isinstance(value, (float, int, Decimal)) else value)
        rows = [{**row, **{name: exact(row.get(name), unit) for name, unit in decimals.items()}} for row in rows]
    return pa.Table.from_pylist(rows, schema=table_contract.arrow_schema())


def _delete_sql(table: str) -> str:
    key = contract(table).primary_key
    return (f'DELETE FROM "{table}" USING batch WHERE '
            + " AND ".join(f'"{table}"."{k}" = batch."{k}"' for k in key))


def _replace_groups_sql(table: str) -> tuple[str, ...]:
    """The stored rows of every group the batch brings: a group comes whole (warehouse.whole_groups) and replaces
    the stored one, so no row of an older path stays beside it."""
    group = contract(table).replace_group
    if not group:
        return ()
    return (f'DELETE FROM "{table}" WHERE EXISTS (SELECT 1 FROM batch WHERE '
            + " AND ".join(f'"{table}"."{g}" = batch."{g}"' for g in group) + ")",)


def _upsert_sql(table: str) -> str:
    """INSERT ... ON CONFLICT (primary key) DO UPDATE: a re-run or a correction replaces, never duplicates."""
    quoted = lambda names: ", ".join(f'"{n}"' for n in names)
    table_contract = contract(table)
    columns = [c.name for c in table_contract.columns]
    updates = ", ".join(f'"{c}" = excluded."{c}"' for c in table_contract.updated_columns)
    return (f'INSERT INTO "{table}" ({quoted(columns)}) SELECT {quoted(columns)} FROM batch '
            f'ON CONFLICT ({quoted(table_contract.primary_key)}) DO ' + (f"UPDATE SET {updates}" if updates else "NOTHING"))
