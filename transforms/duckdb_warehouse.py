"""The embedded warehouse: one DuckDB file, written by one process, read by BI tools through published snapshots.

DuckDB lets one process open a database file for writing and then no other process may open it, not even to
read. So the writer keeps its own file and, after the commits it chooses, publishes a consistent copy next to it
(its bytes after a checkpoint, written aside, then renamed over the old one). Readers open the published copy
read-only; a rename never disturbs a reader that still has the previous copy open.

Raw input that may hold personal data (a contract's private columns: a dead letter's bytes) never enters that file:
the writer keeps it in a private store beside it, `<name>.private.duckdb`, and the file, its copy and every reader
see NULL. The writer's files are its own (mode 0600); the published copy is for readers.

Every commit is one transaction: the rows it upserts (by each table's primary key, from schemas/tables/) and the
source offsets they account for, so a restarted job resumes exactly where the stored rows end. The tables declare no
PRIMARY KEY to DuckDB: its index of the keys must fit in memory whole, and ON CONFLICT against it is slower than the
joins by key that upsert here (README, "No key index in DuckDB"). The commit keeps each key unique: it refuses a
batch that brings a key twice, and the checkpoint's unique-key expectation checks the stored table.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from schemas.contracts import RETRACTED, contract, contracts, views
from transforms.warehouse_rows import chunks_of

OFFSETS_DDL = """CREATE TABLE IF NOT EXISTS source_offsets (
  "topic" VARCHAR NOT NULL, "partition" BIGINT NOT NULL, "next_offset" BIGINT NOT NULL,
  "committed_at" TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY ("topic", "partition"))"""


MEMORY_LIMIT_ENV = "JOURNEYS_DUCKDB_MEMORY_LIMIT"  # the writer's DuckDB memory, e.g. 3GB
# By default: DuckDB's own (80 % of RAM) kept whatever a commit gathered until it reached that, so a ten-million-event
# backfill's commit grew to gigabytes. The commit's statements are scans and hash joins that spill beyond the limit.
DEFAULT_MEMORY_LIMIT = "1GB"
RETRACTING, LANDING = "retracting", "landing"  # temporary tables: a commit's rows of one table, gathered
PRIVATE = "private"  # the private store, as the writer's connection attaches it


# DuckDB's words when another process holds the file for writing, and only then (its checksum errors name a "block")
_HELD_BY_A_WRITER = re.compile(r"Could not set lock on file|Conflicting lock is held", re.IGNORECASE)


def held_by_a_writer(error: Exception) -> bool:
    """Whether DuckDB refused to open a file because another process writes it (a running job)."""
    return isinstance(error, duckdb.Error) and bool(_HELD_BY_A_WRITER.search(str(error)))


def connect_read_only(path: str | Path) -> duckdb.DuckDBPyConnection:
    """A reader's connection to a warehouse file (journeys sql, report, validate on the published copy): the file
    read-only, no other file read or written (no ATTACH, COPY, EXPORT, read_text, extension installs), and every
    setting locked so that no statement turns either back on."""
    connection = duckdb.connect(str(path), read_only=True)
    connection.execute("SET TimeZone = 'UTC'")  # loads ICU, which needs file access: before it is turned off
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    return connection


class DuckDBWarehouse:
    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        if read_only:  # a reader of a published copy (journeys validate while a stream writes)
            self.connection = connect_read_only(self.path)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.private_path = self.path.with_suffix(".private.duckdb")
        self.connection = duckdb.connect(str(self.path))
        self.connection.execute("SET TimeZone = 'UTC'")
        # Beyond it DuckDB spills a commit's gathered rows and its joins by key to `<file>.tmp`
        self.connection.execute("SET memory_limit = ?", [os.environ.get(MEMORY_LIMIT_ENV) or DEFAULT_MEMORY_LIMIT])
        quoted = str(self.private_path).replace("'", "''")
        self.connection.execute(f"ATTACH '{quoted}' AS {PRIVATE}")
        for path in (self.path, self.private_path):
            path.chmod(0o600)  # its write-ahead log, created beside it later, takes the umask: see commit
        for table in contracts().values():
            self.connection.execute(table.duckdb_ddl())
            existing = {row[0] for row in self.connection.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_catalog = current_database() "
                "AND table_schema = 'main' AND table_name = ?", [table.table]).fetchall()}
            for statement in table.duckdb_added_columns(existing):  # a file an earlier version created
                self.connection.execute(statement)
            if table.private_columns:
                self.connection.execute(table.duckdb_ddl(private_store=PRIVATE))
        self.connection.execute(OFFSETS_DDL)
        for name, query in views().items():
            self.connection.execute(f'CREATE OR REPLACE VIEW "{name}" AS {query.format(tables="")}')

    def commit(self, rows_by_table: dict, offsets: dict[tuple[str, int], int] | None = None) -> None:
        """Upsert the rows (delete the retracted ones) and advance the offsets, all or nothing. Offsets never move
        backwards. A table's rows come as transforms/warehouse_rows.py describes, taken a chunk at a time.

        First the rows are gathered into temporary tables, and their private columns go to the private store (its
        own transaction: DuckDB writes one database per transaction); then one transaction lands everything else
        and the offsets. A commit that fails in between leaves private rows whose commit a replay brings again,
        and replaces."""
        con = self.connection
        gathered = []
        try:
            con.execute("BEGIN TRANSACTION")
            for i, (table, rows) in enumerate(rows_by_table.items()):
                names = (f"{RETRACTING}_{i}", f"{LANDING}_{i}")
                gathered.append((table, *names))
                if getattr(rows, "connection", None) is con:  # StagedRows this connection holds
                    self._gather_staged(table, rows, names)
                else:
                    self._gather(table, chunks_of(rows), names)
                    _refuse_a_key_twice(con, table, names)  # staged rows are one per key by their query already
                self._keep_private(table, names[1])
            con.execute("COMMIT")
            con.execute("BEGIN TRANSACTION")
            for table, retracting, landing in gathered:
                if contract(table).newer_revision_only:
                    con.execute(_older_groups_sql(table, landing))
                for statements, rows in (((_delete_sql(table),), retracting),
                                         ((*_replace_groups_sql(table), *_upsert_sql(table)), landing)):
                    if con.execute(f"SELECT count(*) FROM {rows}").fetchone()[0]:
                        con.execute(f"CREATE OR REPLACE TEMP VIEW batch AS SELECT * FROM {rows}")
                        for sql in statements:
                            con.execute(sql)
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
        finally:
            failing = sys.exc_info()[1]
            try:
                con.execute("DROP VIEW IF EXISTS batch")
                for _, *names in gathered:
                    for name in names:
                        con.execute(f"DROP TABLE IF EXISTS {name}")
            except duckdb.Error:
                if failing is None:
                    raise
                # the connection the commit broke cannot tidy up either: the commit's own error is the one to tell
            for log in (self.path, self.private_path):
                wal = log.with_name(log.name + ".wal")
                if wal.exists():
                    wal.chmod(0o600)

    def _keep_private(self, table: str, landing: str) -> None:
        """The gathered rows' private columns into the private store, by key (a replayed commit replaces them), and
        NULL in the rows that land."""
        private = contract(table).private_columns
        if not private:
            return
        columns = ", ".join(f'"{c}"' for c in (*contract(table).primary_key, *private))
        self.connection.execute(f'INSERT OR REPLACE INTO {PRIVATE}."{table}" ({columns}) SELECT {columns} FROM {landing}')
        self.connection.execute(f"UPDATE {landing} SET " + ", ".join(f'"{c}" = NULL' for c in private))

    def _gather(self, table: str, chunks, names: tuple[str, str]) -> None:
        """A table's rows into two temporary tables (`names`), its retractions and the rows to land, a chunk at a
        time: DuckDB holds them, not Python, and the statements that follow each take one of them whole (one columnar
        statement per table: executemany would insert row by row, 10 ms each)."""
        con = self.connection
        for gathered in names:
            con.execute(f'CREATE OR REPLACE TEMP TABLE {gathered} AS SELECT * FROM "{table}" LIMIT 0')
        for chunk in chunks:
            for gathered, part in zip(names, _retracted_and_landing(table, chunk)):
                if part is not None and part.num_rows:
                    con.register("chunk", part)
                    try:
                        con.execute(f"INSERT INTO {gathered} BY NAME SELECT * FROM chunk")
                    finally:
                        con.unregister("chunk")

    def _gather_staged(self, table: str, staged, names: tuple[str, str]) -> None:
        """As _gather, from a temporary table of this connection (transforms/staging.StagedRows): one statement each,
        the rows never leave DuckDB."""
        for gathered, retracted in zip(names, (True, False)):
            self.connection.execute(f'CREATE OR REPLACE TEMP TABLE {gathered} AS SELECT * FROM "{table}" LIMIT 0')
            self.connection.execute(f'INSERT INTO {gathered} BY NAME SELECT * EXCLUDE ("{RETRACTED}") '
                                    f"FROM {staged.relation(retracted)}")

    def offsets(self) -> dict[tuple[str, int], int]:
        """Where each partition's next unprocessed record is, as of the last commit."""
        return {(topic, partition): offset for topic, partition, offset in
                self.connection.execute('SELECT topic, "partition", next_offset FROM source_offsets').fetchall()}

    def forget_offsets(self, partitions) -> None:
        """Drop the stored offsets of `partitions` ((topic, partition) pairs): a stream no longer waits to read up to
        them (their topic was deleted or recreated); the rows they made stay."""
        for topic, partition in partitions:
            self.connection.execute('DELETE FROM source_offsets WHERE topic = ? AND "partition" = ?',
                                    [topic, partition])

    def rows(self, table: str, private: bool = False) -> list[dict]:
        """Every stored row of `table`, as Python values (Decimal, date, datetime); `private`: with its private
        columns from the private store (to replay dead letters), not NULL."""
        query = f'SELECT * FROM "{table}"'
        private_columns = contract(table).private_columns if private else ()
        if private_columns:
            key = contract(table).primary_key
            query = (f'SELECT "{table}".* REPLACE (' + ", ".join(f'kept."{c}" AS "{c}"' for c in private_columns)
                     + f') FROM "{table}" LEFT JOIN {PRIVATE}."{table}" AS kept ON {same_values(table, key, "kept")}')
        return self.connection.execute(query).fetch_arrow_table().to_pylist()

    def query_frame(self, sql: str):
        """A pandas frame of a DuckDB query over the tables (the data-quality checkpoint's reads)."""
        return self.connection.execute(sql).df()

    def landed_types(self, table: str) -> dict[str, str]:
        """{column: its type as DuckDB has it}."""
        return {row[0]: row[1] for row in self.connection.execute(f'DESCRIBE "{table}"').fetchall()}

    def publish(self, to: str | Path | None = None) -> Path:
        """A consistent copy for readers (default: `<name>.published.duckdb` beside the file), swapped in whole.
        After a CHECKPOINT the file holds every commit and nothing else (the WAL is empty, temporary tables live
        elsewhere), and nothing writes it until the next commit, which this same thread makes: a copy of its bytes
        is the database. DuckDB's own `COPY FROM DATABASE` rewrote every table, so each commit of a stream took
        longer as the warehouse grew (README, "Publishing by copying the file")."""
        target = Path(to) if to else self.path.with_suffix(".published.duckdb")
        aside = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        aside.unlink(missing_ok=True)
        self.connection.execute("CHECKPOINT")
        shutil.copyfile(self.path, aside)
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


def same_values(table: str, columns, other: str = "batch") -> str:
    """The join condition: `table`'s row and `other`'s agree on every one of `columns`."""
    return " AND ".join(f'"{table}"."{c}" = {other}."{c}"' for c in columns)


def _refuse_a_key_twice(con, table: str, names: tuple[str, str]) -> None:
    """Without a key index DuckDB would land both rows of a key a batch brings twice: the callers pick one row per
    key (latest_rows, latest_staged_sql), and a batch that still has two is refused whole."""
    key = ", ".join(f'"{k}"' for k in contract(table).primary_key)
    for gathered in names:
        twice = con.execute(f"SELECT {key} FROM {gathered} GROUP BY ALL HAVING count(*) > 1 LIMIT 1").fetchone()
        if twice:
            raise ValueError(f"{table}: the commit brings the key {twice} more than once; nothing was committed")


def _delete_sql(table: str) -> str:
    return f'DELETE FROM "{table}" USING batch WHERE {same_values(table, contract(table).primary_key)}'


def _older_groups_sql(table: str, landing: str) -> str:
    """Drops the gathered rows of groups whose stored revision is higher: an emission that reaches the warehouse after
    a newer one of its group (another bundle, another worker, a replay) leaves the newer one standing."""
    group = contract(table).replace_group
    return (f"DELETE FROM {landing} WHERE EXISTS (SELECT 1 FROM (SELECT " + ", ".join(f'"{g}"' for g in group)
            + f', max(revision) AS stored_revision FROM "{table}" GROUP BY ALL) AS stored WHERE'
            + f' {same_values(landing, group, "stored")} AND {landing}.revision < stored.stored_revision)')


def _replace_groups_sql(table: str) -> tuple[str, ...]:
    """The stored rows of every group the batch brings: a group comes whole (warehouse.whole_groups) and replaces
    the stored one, so no row of an older path stays beside it."""
    group = contract(table).replace_group
    if not group:
        return ()
    return f'DELETE FROM "{table}" WHERE EXISTS (SELECT 1 FROM batch WHERE {same_values(table, group)})',


def _upsert_sql(table: str) -> tuple[str, ...]:
    """A stored row of a key the batch brings takes the batch's values (but keep_on_update's), the other rows are
    inserted: a re-run or a correction replaces, never duplicates."""
    quoted = lambda names: ", ".join(f'"{n}"' for n in names)
    table_contract = contract(table)
    columns = [c.name for c in table_contract.columns]
    same_key = same_values(table, table_contract.primary_key)
    update = (f'UPDATE "{table}" SET ' + ", ".join(f'"{c}" = batch."{c}"' for c in table_contract.updated_columns)
              + f" FROM batch WHERE {same_key}",) if table_contract.updated_columns else ()
    return (*update, f'INSERT INTO "{table}" ({quoted(columns)}) SELECT {quoted(columns)} FROM batch '
                     f'WHERE NOT EXISTS (SELECT 1 FROM "{table}" WHERE {same_key})')
