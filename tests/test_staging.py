"""Staged landing (transforms/staging.py): bundles write table rows to Parquet, one commit lands the newest row of
each key from the files, gated in chunks, exactly as the rows would have landed from memory."""
import json
from pathlib import Path

import apache_beam as beam
import duckdb
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from schemas.contracts import RETRACTED
from test_data_quality import NOW, cohort, touch
from test_duckdb_warehouse import _credit_rows
from transforms import data_quality
from transforms.data_quality import ValidatedLanding
from transforms.dq_suites import QualityConfig
from transforms.staging import StageTables, latest_staged_sql, staged_batch
from transforms.warehouse import latest_rows


def _stage(directory: Path, table: str, name: str, rows: list[dict], order: int) -> str:
    path = directory / table / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(staged_batch(table, rows, [order] * len(rows)), path)
    return str(path)


def _stored(warehouse, table, columns):
    return warehouse.connection.execute(f"SELECT {columns} FROM {table} ORDER BY ALL").fetchall()


def test_every_bundle_stages_its_rows_and_passes_on_only_paths(tmp_path):
    def check(staged):
        assert sorted({table for table, _ in staged}) == ["order_attribution", "touchpoints"]
        rows = {table: pq.read_table([p for t, p in staged if t == table]).num_rows for table, _ in staged}
        assert rows == {"touchpoints": 5, "order_attribution": 4}  # 2 files of touchpoints: at most 3 rows each
        assert sum(table == "touchpoints" for table, _ in staged) == 2

    with TestPipeline(runner="FnApiRunner") as pipeline:
        tables = {"touchpoints": pipeline | "Touches" >> beam.Create([touch(f"t{i}") for i in range(5)]),
                  "order_attribution": pipeline | "Credits" >> beam.Create(_credit_rows("o1", 2))}
        assert_that(tables | StageTables(str(tmp_path), rows_per_file=3), check)


def test_the_newest_staged_row_of_each_key_is_the_one_latest_rows_keeps(tmp_path):
    first, later = [touch("t1"), touch("t2")], [{**touch("t1"), "channel": "Organic Search"}]
    older_path, newer_path = _credit_rows("o1", 3, revision=1), _credit_rows("o1", 2, revision=2)
    files = {"touchpoints": [_stage(tmp_path, "touchpoints", "b", later, 1),
                             _stage(tmp_path, "touchpoints", "a", first, 0)],
             "order_attribution": [_stage(tmp_path, "order_attribution", "new", newer_path, 0),
                                   _stage(tmp_path, "order_attribution", "old", older_path, 0)]}
    expected = {"touchpoints": latest_rows("touchpoints", [((0,), r) for r in first] + [((1,), r) for r in later]),
                "order_attribution": latest_rows("order_attribution", older_path + newer_path)}
    for table, table_files in files.items():
        picked = duckdb.connect().execute(latest_staged_sql(table, table_files)).fetch_arrow_table().to_pylist()
        key = lambda row: (row.get("touch_id"), row.get("model"), row.get("touch_index"), row.get("revision"))
        assert sorted(map(key, picked)) == sorted(map(key, expected[table]))
    channels = {r["touch_id"]: r["channel"] for r in duckdb.connect().execute(
        latest_staged_sql("touchpoints", files["touchpoints"])).fetch_arrow_table().to_pylist()}
    assert channels == {"t1": "Organic Search", "t2": "Email"}


def test_staged_rows_are_gated_and_committed_a_chunk_at_a_time_and_land_as_rows_from_memory_would(
        tmp_path, warehouse, monkeypatch):
    monkeypatch.setattr(data_quality, "GATE_CHUNK_ROWS", 2)  # several chunks per table
    warehouse.commit({"touchpoints": [touch("gone"), touch("t1")]})
    committed = []  # (table, rows) of each chunk the warehouse took: never a whole table at once
    gather = warehouse._gather

    def noted(table, chunks):
        for chunk in chunks:
            committed.append((table, len(chunk)))
            yield chunk

    monkeypatch.setattr(warehouse, "_gather", lambda table, chunks: gather(table, noted(table, chunks)))
    cohorts = [cohort(0, 2), cohort(1, 5), cohort(2, 3), cohort(3, 1, rate=1.7)]  # 1 and 3 break row rules
    files = {"retention_cohorts": [_stage(tmp_path, "retention_cohorts", "c", cohorts, 0)],
             "touchpoints": [_stage(tmp_path, "touchpoints", "t", [touch("t1"), touch("t2"), touch("t3"),
                                                                    {**touch("gone"), RETRACTED: True}], 0)]}
    landing = ValidatedLanding(warehouse, QualityConfig(), "backfill").land_staged(
        files, {("orders", 0): 7}, "run-staged", spill_dir=str(tmp_path / "spill"))
    assert _stored(warehouse, "touchpoints", "touch_id") == [("t1",), ("t2",), ("t3",)]  # "gone" retracted
    assert _stored(warehouse, "retention_cohorts", "period_index") == [(0,), (2,)]
    quarantined = _stored(warehouse, "quarantine", "row_key, rule")
    assert {json.loads(key)["period_index"] for key, _ in quarantined} == {1, 3}
    assert landing.quarantined == len(quarantined) and landing.landed["touchpoints"] == 4
    assert [n for table, n in committed if table == "touchpoints"] == [2, 2]
    assert [n for table, n in committed if table == "retention_cohorts"] == [1, 1]  # what passed the gate
    assert warehouse.offsets() == {("orders", 0): 7}
    # one result per rule, merged over the chunks: it failed where any chunk failed
    gated = [o for o in landing.outcomes if o.stage == "row_gate"]
    failed = {o.expectation: o for o in gated if not o.success}
    assert failed["active_within_cohort"].element_count == 4
    assert failed["range:retention_rate"].unexpected_count == 1
    assert len([o for o in gated if o.expectation == "active_within_cohort"]) == 1
