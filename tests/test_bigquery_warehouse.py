"""The BigQuery warehouse against the emulator (bqemulator from PyPI): dataset and tables from the contracts with
their partitioning and clustering, MERGE by primary key through a staging table, retractions, offsets that never
move backwards — each read back through the BigQuery API."""
import base64
import datetime as dt
import uuid
from decimal import Decimal

import pytest

from schemas.contracts import RETRACTED, contracts, views
from transforms.bigquery_warehouse import BigQueryTarget, BigQueryWarehouse

pytestmark = [pytest.mark.integration, pytest.mark.bigquery]
T0 = dt.datetime(2026, 9, 1, 12, tzinfo=dt.timezone.utc)


@pytest.fixture
def warehouse(bigquery_emulator):
    warehouse = BigQueryWarehouse(BigQueryTarget("journeys-local", f"test_{uuid.uuid4().hex[:10]}",
                                                 endpoint=bigquery_emulator))
    yield warehouse
    warehouse.close()


def _query(warehouse, sql):
    return [tuple(row.values()) for row in warehouse.client.query(sql.format(d=warehouse.dataset)).result()]


def _daily(channel, revenue, **extra):
    return {"date": T0.date(), "model": "linear", "channel": channel, "currency": "EUR", "conversions": 1.0,
            "revenue": revenue, **extra}


def test_tables_come_from_the_contracts_with_partitioning_and_clustering(warehouse):
    tables = {t.table_id for t in warehouse.client.list_tables(warehouse.dataset)}
    assert tables == set(contracts()) | {"source_offsets"} | set(views())
    touchpoints = warehouse.client.get_table(f"{warehouse.dataset}.touchpoints")
    assert [f.name for f in touchpoints.schema] == [c.name for c in contracts()["touchpoints"].columns]
    assert touchpoints.time_partitioning.field == contracts()["touchpoints"].partition_by
    assert touchpoints.clustering_fields == list(contracts()["touchpoints"].cluster_by)


def test_a_dataset_an_earlier_version_created_gains_the_columns_its_contracts_added_since(bigquery_emulator):
    from google.cloud import bigquery

    target = BigQueryTarget("journeys-local", f"test_{uuid.uuid4().hex[:10]}", endpoint=bigquery_emulator)
    client = target.client()
    client.create_dataset(bigquery.Dataset(f"{target.project}.{target.dataset}"))
    # data_driven_attribution as it was before value-weighted effects: every column from revenue_effect on came since
    schema = contracts()["data_driven_attribution"].bigquery_schema()
    older = schema[:[f.name for f in schema].index("revenue_effect")]
    client.create_table(bigquery.Table(f"{target.project}.{target.dataset}.data_driven_attribution", schema=older))
    warehouse = BigQueryWarehouse(target)
    try:
        table = warehouse.client.get_table(f"{warehouse.dataset}.data_driven_attribution")
        assert [f.name for f in table.schema] == [c.name for c in contracts()["data_driven_attribution"].columns]
    finally:
        warehouse.close()


def test_rows_merge_by_primary_key_and_retractions_delete(warehouse):
    warehouse.commit({"channel_attribution_daily": [_daily("Display", 100.0), _daily("Email", 50.125)]})
    warehouse.commit({"channel_attribution_daily": [_daily("Email", 70.0), _daily("Display", 0.0, **{RETRACTED: True}),
                                                    _daily("Referral", 0.0, **{RETRACTED: True})]})
    assert _query(warehouse, "SELECT channel, revenue FROM `{d}.channel_attribution_daily`") == [
        ("Email", Decimal("70"))]


def test_offsets_merge_and_never_move_backwards(warehouse):
    warehouse.commit({}, {("orders", 0): 10, ("orders", 1): 4})
    warehouse.commit({}, {("orders", 0): 7, ("orders", 1): 9})  # a replayed, older offset for partition 0
    assert warehouse.offsets() == {("orders", 0): 10, ("orders", 1): 9}


def test_the_channel_roi_view_answers(warehouse):
    warehouse.commit({"channel_attribution_daily": [_daily("Paid Social", 300.0), _daily("Email", 100.0)],
                      "channel_spend": [{"month": T0.date().replace(day=1), "channel": "Paid Social",
                                         "currency": "EUR", "spend": 200.0}]})
    rows = _query(warehouse, "SELECT channel, revenue_share, spend, roi FROM `{d}.channel_roi` ORDER BY channel")
    assert [(c, float(share), spend, roi if roi is None else float(roi)) for c, share, spend, roi in rows] == [
        ("Email", 0.25, None, None), ("Paid Social", 0.75, Decimal("200"), 0.5)]


def test_an_order_landed_again_with_a_shorter_path_replaces_its_rows_whole(warehouse):
    from test_duckdb_warehouse import _credit_rows

    warehouse.commit({"order_attribution": _credit_rows("o1", 3) + _credit_rows("o2", 2)})
    warehouse.commit({"order_attribution": _credit_rows("o1", 2, revision=1)})
    warehouse.commit({"order_attribution": _credit_rows("o1", 4, revision=0)})  # an older one, late: no effect
    assert _query(warehouse, "SELECT order_id, count(*), max(revision) FROM `{d}.order_attribution` GROUP BY 1 "
                             "ORDER BY 1") == [("o1", 4, 1), ("o2", 4, 0)]


def test_a_group_that_spans_two_chunks_of_one_commit_replaces_the_stored_group_whole(warehouse):
    """A backfill's commit hands each table over in chunks of Arrow; one MERGE per table takes them all."""
    from test_duckdb_warehouse import _credit_rows
    from transforms.duckdb_warehouse import arrow_batch

    warehouse.commit({"order_attribution": _credit_rows("o1", 3) + _credit_rows("o2", 2)})
    newer = _credit_rows("o1", 4, revision=1)
    warehouse.commit({"order_attribution": iter([arrow_batch("order_attribution", newer[:3]),
                                                 arrow_batch("order_attribution", newer[3:])])})
    assert _query(warehouse, "SELECT order_id, count(*), max(revision) FROM `{d}.order_attribution` GROUP BY 1 "
                             "ORDER BY 1") == [("o1", 8, 1), ("o2", 4, 0)]


def test_a_dead_letters_raw_bytes_stay_in_the_writers_dataset_and_readers_see_null(warehouse):
    raw = b"raw-customer-id-4711@example.com"
    warehouse.commit({"dead_letters": [{"topic": "orders", "partition": 0, "offset": 41, "kafka_timestamp": T0,
                                        "key": b"k", "value": raw, "stage": "decode", "reason": "unknown_schema_id",
                                        "error": "schema id 7 is not registered", "first_seen": T0}]})
    published = warehouse.publish()
    [(key, value, reason)] = _query(warehouse, "SELECT key, value, reason FROM `{d}.dead_letters`")
    # the emulator answers BYTES as their base64 text
    assert (base64.b64decode(key), base64.b64decode(value), reason) == (b"k", raw, "unknown_schema_id")
    assert [tuple(row.values()) for row in warehouse.client.query(
        f"SELECT key, value, reason FROM `{published}.dead_letters`").result()] == [(None, None, "unknown_schema_id")]
