"""Output-table contracts: valid, documented, and every derived schema (DuckDB, BigQuery, Avro) is usable."""
import datetime as dt
import json
from decimal import Decimal

import duckdb
import fastavro
import pytest

from schemas.contracts import _load, contract, contracts

TABLES = ("touchpoints", "customers", "order_attribution", "channel_attribution_daily", "data_driven_attribution",
          "retention_cohorts", "social_impact", "social_impact_effects", "dead_letters", "quarantine", "dq_results",
          "channel_spend")  # loaded by the user, for the channel_roi view: the pipeline creates it, never writes it


def test_one_contract_per_warehouse_table():
    assert set(contracts()) == set(TABLES)


@pytest.mark.parametrize("table", TABLES)
def test_duckdb_ddl_creates_the_contracts_columns_with_the_key_never_null(table):
    c = contract(table)
    con = duckdb.connect()
    con.execute(c.duckdb_ddl())
    described = {row[0]: row for row in con.execute(f'DESCRIBE "{table}"').fetchall()}
    assert list(described) == [col.name for col in c.columns]
    assert all((described[col.name][2] == "YES") == col.nullable for col in c.columns)
    assert all(described[key][2] == "NO" for key in c.primary_key)
    row = {col.name: _sample(col) for col in c.columns}
    con.execute(f'INSERT INTO "{table}" VALUES ({", ".join("?" for _ in c.columns)})', list(row.values()))
    assert con.execute(f'SELECT count(*) FROM "{table}"').fetchone() == (1,)


@pytest.mark.parametrize("table", TABLES)
def test_avro_and_bigquery_schemas_derive_from_the_contract(table):
    c = contract(table)
    parsed = fastavro.parse_schema(c.avro_schema())
    row = {col.name: _sample(col) for col in c.columns}
    records = list(fastavro.reader(_written(parsed, row)))
    assert records[0].keys() == row.keys()
    fields = c.bigquery_schema()
    assert [f.name for f in fields] == [col.name for col in c.columns]
    assert all(f.description for f in fields)
    assert {f.mode for f in fields if f.name in c.primary_key} == {"REQUIRED"}
    assert c.markdown().count("\n| `") == len(c.columns)


def test_a_broken_contract_is_refused(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"table": "bad", "doc": "x", "primary_key": ["id"], "cluster_by": ["nope"],
                                "columns": [{"name": "id", "type": "uuid", "nullable": True, "doc": ""}]}))
    with pytest.raises(ValueError) as caught:
        _load(path)
    message = str(caught.value)
    assert "unknown type uuid" in message and "no description" in message
    assert "primary key id must be a non-null column" in message and "nope is not a column" in message


def _sample(column):
    if column.decimal:
        return Decimal("1.25")
    return {"string": column.accepted_values[0] if column.accepted_values else "x", "int": 1, "float": 0.5,
            "bool": True, "timestamp": dt.datetime(2026, 9, 1, tzinfo=dt.timezone.utc),
            "date": dt.date(2026, 9, 1), "bytes": b"\x00raw"}[column.type]


def _written(schema, row):
    import io

    buffer = io.BytesIO()
    fastavro.writer(buffer, schema, [row])
    buffer.seek(0)
    return buffer
