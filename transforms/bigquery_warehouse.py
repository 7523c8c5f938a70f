"""The production warehouse: BigQuery through google-cloud-bigquery, with the same interface as DuckDBWarehouse.

Tables come from the contracts in schemas/tables/ (time partitioning and clustering included). A commit loads each
table's rows into a staging table of its own (a load job: no streaming buffer, so nothing blocks the MERGE), MERGEs
them into the table by primary key and drops the staging table; then it MERGEs the source offsets. A commit that
dies half way leaves rows whose offsets were not stored: the restarted job recomputes them and the MERGE replaces
them with the same values, so nothing is counted twice.

Credentials: Application Default Credentials, or a service-account key file. An `endpoint` points the client at
an emulator (the tests use the `bqemulator` package) and then needs no credentials.
"""
from __future__ import annotations

import base64
import datetime as dt
import decimal
import logging
import uuid
from dataclasses import dataclass

from schemas.contracts import RETRACTED, contract, contracts, views

log = logging.getLogger("journeys.bigquery")
STAGING_EXPIRY = dt.timedelta(hours=6)  # staging tables of a commit that died are dropped by BigQuery itself


@dataclass(frozen=True)
class BigQueryTarget:
    project: str
    dataset: str = "customer_journeys"
    location: str = "US"
    key_file: str | None = None  # a service-account JSON key; default: Application Default Credentials
    endpoint: str | None = None  # e.g. http://127.0.0.1:9050 for an emulator

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
        self.client.create_dataset(bigquery.Dataset(self.dataset), exists_ok=True)
        for table_contract in contracts().values():
            table = bigquery.Table(f"{self.dataset}.{table_contract.table}", schema=table_contract.bigquery_schema())
            table.description = table_contract.doc
            if table_contract.partition_by:
                kind = table_contract.column(table_contract.partition_by).type
                table.time_partitioning = bigquery.TimePartitioning(
                    field=table_contract.partition_by, type_="MONTH" if kind == "date" else "DAY")
            table.clustering_fields = list(table_contract.cluster_by) or None
            self.client.create_table(table, exists_ok=True)
        self.client.create_table(bigquery.Table(f"{self.dataset}.source_offsets", schema=_offsets_schema()),
                                 exists_ok=True)
        for name, query in views().items():
            view = bigquery.Table(f"{self.dataset}.{name}")
            view.view_query = query.format(tables=f"`{self.dataset}`.")
            self.client.create_table(view, exists_ok=True)

    def _merge(self, table: str, rows: list[dict], schema, key: tuple[str, ...], updated: tuple[str, ...]) -> None:
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
            self.client.query(_merge_sql(f"{self.dataset}.{table}", staging_id, columns, key, updated)).result()
        finally:
            self.client.delete_table(staging_id, not_found_ok=True)

    def commit(self, rows_by_table: dict[str, list[dict]], offsets: dict[tuple[str, int], int] | None = None) -> None:
        """MERGE the rows by primary key, then the offsets (never backwards): a retry or a replay is harmless."""
        for table, rows in rows_by_table.items():
            if rows:
                table_contract = contract(table)
                self._merge(table, rows, table_contract.bigquery_schema(), table_contract.primary_key,
                            table_contract.updated_columns)
        if offsets:
            now = dt.datetime.now(dt.timezone.utc)
            rows = [{"topic": topic, "partition": partition, "next_offset": offset, "committed_at": now}
                    for (topic, partition), offset in offsets.items()]
            self._merge("source_offsets", rows, _offsets_schema(), ("topic", "partition"),
                        ("next_offset", "committed_at"))

    def offsets(self) -> dict[tuple[str, int], int]:
        rows = self.client.query(f"SELECT topic, `partition`, next_offset FROM `{self.dataset}.source_offsets`")
        return {(row.topic, row.partition): row.next_offset for row in rows.result()}

    def publish(self, to=None) -> str:
        """BigQuery readers see every committed MERGE: nothing to publish."""
        return self.dataset

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
