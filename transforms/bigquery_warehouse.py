"""The production warehouse: BigQuery through google-cloud-bigquery, with the same interface as DuckDBWarehouse.

Tables come from the contracts in schemas/tables/ (time partitioning and clustering included). A commit loads each
table's rows into a staging table of its own (a load job: no streaming buffer, so nothing blocks the MERGE), MERGEs
them into the table by primary key and drops the staging table; then it MERGEs the source offsets. A commit that
dies half way leaves rows whose offsets were not stored: the restarted job recomputes them and the MERGE replaces
them with the same values, so nothing is counted twice.

BI tools read a second dataset, `<dataset>_published`: the same tables and views, refreshed by `publish()` after a
commit whose checkpoint passed (transforms/data_quality.py). It copies the tables changed since the last publish in
one multi-statement transaction, so readers see all of a good commit or none of it, and nothing of a commit a
block-severity expectation held back. A contract's private columns (a dead letter's raw bytes, which may hold
personal data) stay in the writer's dataset: the readers' copy has NULL there.

Credentials: Application Default Credentials, or a service-account key file. An `endpoint` points the client at
an emulator (the tests use the `bqemulator` package) and then needs no credentials.
"""
from __future__ import annotations

import base64
import datetime as dt
import decimal
import logging
import re
import uuid
from dataclasses import dataclass

from schemas.contracts import RETRACTED, contract, contracts, views
from transforms.warehouse_rows import chunks_of

log = logging.getLogger("journeys.bigquery")
STAGING_EXPIRY = dt.timedelta(hours=6)  # staging tables of a commit that died are dropped by BigQuery itself


@dataclass(frozen=True)
class BigQueryTarget:
    project: str
    dataset: str = "customer_journeys"
    location: str = "US"
    key_file: str | None = None  # a service-account JSON key; default: Application Default Credentials
    endpoint: str | None = None  # e.g. http://127.0.0.1:9050 for an emulator
    published_dataset: str | None = None  # what BI tools read; default `<dataset>_published`

    @property
    def readers_dataset(self) -> str:
        return self.published_dataset or f"{self.dataset}_published"

    def client(self):
        from google.cloud import bigquery

        if self.endpoint:
            from google.api_core.client_options import ClientOptions
            from google.auth.credentials import AnonymousCredentials
            import google.cloud.bigquery.client as bigquery_client

            # bqemulator 1.4 refuses the client's generic "*/*" media type on multipart load uploads.
            bigquery_client._GENERIC_CONTENT_TYPE = "application/octet-stream"
            return bigquery.Client(project=self.project, location=self.location, credentials=AnonymousCredentials(),
                                   client_options=ClientOptions(api_endpoint=self.endpoint))
        if self.key_file:
            from google.oauth2 import service_account

            credentials = service_account.Credentials.from_service_account_file(self.key_file)
            return bigquery.Client(project=self.project, location=self.location, credentials=credentials)
        return bigquery.Client(project=self.project, location=self.location)


def _dict_rows(rows) -> list[dict]:
    """A commit's rows of one table as dicts, from dicts, an Arrow table, or an iterator of chunks of either."""
    gathered = []
    for chunk in chunks_of(rows):
        if isinstance(chunk, list):
            gathered += chunk
        else:  # Arrow: its RETRACTED column says False where a dict leaves it out
            gathered += [{k: v for k, v in row.items() if k != RETRACTED or v} for row in chunk.to_pylist()]
    return gathered


def _with_added_columns(client, table, schema) -> None:
    """A table an earlier version created gets the columns its contract added since (nullable, at the end)."""
    existing = {field.name for field in table.schema}
    added = [field for field in schema if field.name not in existing]
    if added:
        table.schema = [*table.schema, *added]
        client.update_table(table, ["schema"])


def _offsets_schema():
    from google.cloud.bigquery import SchemaField

    return [SchemaField("topic", "STRING", mode="REQUIRED"), SchemaField("partition", "INT64", mode="REQUIRED"),
            SchemaField("next_offset", "INT64", mode="REQUIRED"), SchemaField("committed_at", "TIMESTAMP")]


def json_value(value):
    """A row value as the JSON a BigQuery load job reads."""
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


class BigQueryWarehouse:
    def __init__(self, target: BigQueryTarget):
        from google.cloud import bigquery

        self.target = target
        self.client = target.client()
        self.dataset = f"{target.project}.{target.dataset}"
        self.published = f"{target.project}.{target.readers_dataset}"
        for dataset in (self.dataset, self.published):
            self.client.create_dataset(bigquery.Dataset(dataset), exists_ok=True)
            for table_contract in contracts().values():
                table = bigquery.Table(f"{dataset}.{table_contract.table}", schema=table_contract.bigquery_schema())
                table.description = table_contract.doc
                if table_contract.partition_by:
                    kind = table_contract.column(table_contract.partition_by).type
                    table.time_partitioning = bigquery.TimePartitioning(
                        field=table_contract.partition_by, type_="MONTH" if kind == "date" else "DAY")
                table.clustering_fields = list(table_contract.cluster_by) or None
                _with_added_columns(self.client, self.client.create_table(table, exists_ok=True), table.schema)
            self.client.create_table(bigquery.Table(f"{dataset}.source_offsets", schema=_offsets_schema()),
                                     exists_ok=True)
            for name, query in views().items():
                view = bigquery.Table(f"{dataset}.{name}")
                view.view_query = query.format(tables=f"`{dataset}`.")
                self.client.create_table(view, exists_ok=True)
        # What readers may lack: everything at start (another process may have committed since the last publish).
        self.unpublished = {*contracts(), "source_offsets"}

    def _merge(self, table: str, rows: list[dict], schema, key: tuple[str, ...], updated: tuple[str, ...],
               group: tuple[str, ...] = ()) -> None:
        from google.cloud import bigquery

        columns = [field.name for field in schema]
        schema = [*schema, bigquery.SchemaField(RETRACTED, "BOOL")]  # the staging rows say which ones to delete
        staging_id = f"{self.dataset}._staging_{table}_{uuid.uuid4().hex[:12]}"
        staging = bigquery.Table(staging_id, schema=schema)
        staging.expires = dt.datetime.now(dt.timezone.utc) + STAGING_EXPIRY
        self.client.create_table(staging)
        try:
            names = [field.name for field in schema]
            load = bigquery.LoadJobConfig(schema=schema, write_disposition="WRITE_TRUNCATE",
                                          source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON)
            self.client.load_table_from_json([{n: json_value(row.get(n)) for n in names} for row in rows],
                                             staging_id, job_config=load).result()
            if group:  # the groups the batch brings (whole) replace their stored rows, unless (newer_revision_only)
                # a stored one has a higher revision: an older emission arriving late leaves the newer standing. (Not atomic with the
                # MERGE: a crash between them leaves the group to the replay, which lands it before offsets move.)
                on = " AND ".join(f"S.`{g}` = T.`{g}`" for g in group)
                if contract(table).newer_revision_only:
                    self.client.query(f"DELETE FROM `{staging_id}` S WHERE EXISTS (SELECT 1 FROM "
                                      f"`{self.dataset}.{table}` T WHERE {on} AND T.`revision` > S.`revision`)").result()
                self.client.query(f"DELETE FROM `{self.dataset}.{table}` T WHERE EXISTS (SELECT 1 FROM `{staging_id}` S "
                                  f"WHERE NOT COALESCE(S.`{RETRACTED}`, FALSE) AND {on})").result()
            self.client.query(_merge_sql(f"{self.dataset}.{table}", staging_id, columns, key, updated)).result()
        finally:
            self.client.delete_table(staging_id, not_found_ok=True)

    def commit(self, rows_by_table: dict, offsets: dict[tuple[str, int], int] | None = None) -> None:
        """MERGE the rows by primary key, then the offsets (never backwards): a retry or a replay is harmless. A
        table's rows come as dicts, as an Arrow table of its contract's columns (and RETRACTED), or as an iterator of
        such chunks (one MERGE per table: its chunks are gathered)."""
        for table, rows in rows_by_table.items():
            rows = _dict_rows(rows)
            if rows:
                self.unpublished.add(table)
                table_contract = contract(table)
                self._merge(table, rows, table_contract.bigquery_schema(), table_contract.primary_key,
                            table_contract.updated_columns, table_contract.replace_group)
        if offsets:
            now = dt.datetime.now(dt.timezone.utc)
            rows = [{"topic": topic, "partition": partition, "next_offset": offset, "committed_at": now}
                    for (topic, partition), offset in offsets.items()]
            self._merge("source_offsets", rows, _offsets_schema(), ("topic", "partition"),
                        ("next_offset", "committed_at"))
            self.unpublished.add("source_offsets")

    def offsets(self) -> dict[tuple[str, int], int]:
        rows = self.client.query(f"SELECT topic, `partition`, next_offset FROM `{self.dataset}.source_offsets`")
        return {(row.topic, row.partition): row.next_offset for row in rows.result()}

    def forget_offsets(self, partitions) -> None:
        """As DuckDBWarehouse.forget_offsets."""
        from google.cloud import bigquery

        for topic, partition in partitions:
            self.client.query(f"DELETE FROM `{self.dataset}.source_offsets` WHERE topic = @topic AND `partition` = "
                              f"@partition", job_config=bigquery.QueryJobConfig(query_parameters=[
                                  bigquery.ScalarQueryParameter("topic", "STRING", topic),
                                  bigquery.ScalarQueryParameter("partition", "INT64", partition)])).result()
        self.unpublished.add("source_offsets")

    def rows(self, table: str) -> list[dict]:
        """Every stored row of `table`, as Python values (Decimal, date, datetime)."""
        return [dict(row.items()) for row in self.client.query(f"SELECT * FROM `{self.dataset}.{table}`").result()]

    def query_frame(self, sql: str):
        """A pandas frame of a DuckDB query over the tables it names, each fetched whole from BigQuery as Arrow: the
        data-quality rules are written once, in DuckDB SQL, for both warehouses."""
        import duckdb

        local = duckdb.connect()
        local.execute("SET TimeZone = 'UTC'")
        for name in sorted({*contracts(), "source_offsets"}):
            if re.search(rf"\b{name}\b", sql):
                fetched = self.client.query(f"SELECT * FROM `{self.dataset}.{name}`").result()
                local.register(name, fetched.to_arrow(create_bqstorage_client=False))
        try:
            return local.execute(sql).df()
        finally:
            local.close()

    def landed_types(self, table: str) -> dict[str, str]:
        """{column: its BigQuery type}."""
        return {field.name: field.field_type for field in self.client.get_table(f"{self.dataset}.{table}").schema}

    def publish(self) -> str:
        """Copy the tables changed since the last publish into the readers' dataset, in one transaction."""
        if self.unpublished:
            statements = []
            for table in sorted(self.unpublished):
                schema = contract(table).bigquery_schema() if table in contracts() else _offsets_schema()
                private = contract(table).private_columns if table in contracts() else ()
                columns = ", ".join(f"`{field.name}`" for field in schema)
                values = ", ".join(f"CAST(NULL AS {field.field_type}) AS `{field.name}`" if field.name in private
                                   else f"`{field.name}`" for field in schema)
                statements += [f"DELETE FROM `{self.published}.{table}` WHERE TRUE",
                               f"INSERT INTO `{self.published}.{table}` ({columns}) "
                               f"SELECT {values} FROM `{self.dataset}.{table}`"]
            self.client.query("BEGIN TRANSACTION;\n" + ";\n".join(statements) + ";\nCOMMIT TRANSACTION;").result()
            self.unpublished.clear()
        return self.published

    def close(self) -> None:
        self.client.close()


def _merge_sql(table: str, staging: str, columns: list[str], key: tuple[str, ...], updated: tuple[str, ...]) -> str:
    quoted = lambda name: f"`{name}`"
    on = " AND ".join(f"T.{quoted(k)} = S.{quoted(k)}" for k in key)
    # Offsets never move backwards, whatever order two commits land in.
    assign = lambda c: (f"{quoted(c)} = GREATEST(T.{quoted(c)}, S.{quoted(c)})" if c == "next_offset"
                        else f"{quoted(c)} = S.{quoted(c)}")
    retracted = f"COALESCE(S.{quoted(RETRACTED)}, FALSE)"
    update = (f"WHEN MATCHED AND NOT {retracted} THEN UPDATE SET {', '.join(map(assign, updated))} "
              if updated else "")
    return (f"MERGE `{table}` T USING `{staging}` S ON {on} WHEN MATCHED AND {retracted} THEN DELETE {update}"
            f"WHEN NOT MATCHED AND NOT {retracted} THEN INSERT ({', '.join(map(quoted, columns))}) "
            f"VALUES ({', '.join('S.' + quoted(c) for c in columns)})")
