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
from test_data_quality import cohort, touch
from test_duckdb_warehouse import _credit_rows
from transforms import data_quality
from transforms.data_quality import ValidatedLanding
from transforms.dq_gate import gate_arrow
from transforms.dq_suites import QualityConfig
from transforms.staging import StageTables, latest_staged_sql, staged_batch
from transforms.warehouse import latest_rows
from transforms.warehouse_rows import chunks_of


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


class _ArrowChunkWarehouse:
    """A warehouse that is not DuckDB (as BigQuery): it takes a table's rows as Arrow chunks. Lands in DuckDB."""

    def __init__(self, warehouse, committed: list):
        self.warehouse, self.committed = warehouse, committed

    def commit(self, rows_by_table, offsets=None):
        def noted(table, chunks):
            for chunk in chunks_of(chunks):
                self.committed.append((table, len(chunk)))
                yield chunk

        self.warehouse.commit({table: noted(table, rows) for table, rows in rows_by_table.items()}, offsets)

    def __getattr__(self, name):
        if name == "connection":
            raise AttributeError(name)
        return getattr(self.warehouse, name)


def _cohorts_and_touches(tmp_path):
    cohorts = [cohort(0, 2), cohort(1, 5), cohort(2, 3), cohort(3, 1, rate=1.7)]  # 1 and 3 break row rules
    return {"retention_cohorts": [_stage(tmp_path, "retention_cohorts", "c", cohorts, 0)],
            "touchpoints": [_stage(tmp_path, "touchpoints", "t", [touch("t1"), touch("t2"), touch("t3"),
                                                                   {**touch("gone"), RETRACTED: True}], 0)]}


def test_staged_rows_are_gated_in_the_writers_duckdb_and_never_pass_through_python(tmp_path, warehouse, monkeypatch):
    monkeypatch.setattr(data_quality, "GATE_CHUNK_ROWS", 2)  # Great Expectations takes the suspect table in chunks
    warehouse.commit({"touchpoints": [touch("gone"), touch("t1")]})
    gather = warehouse._gather  # the quarantine and the gate's results still come as Python rows

    def gathered(table, chunks, names):
        assert table not in ("touchpoints", "retention_cohorts"), "a staged table's rows went through Python"
        gather(table, chunks, names)

    monkeypatch.setattr(warehouse, "_gather", gathered)
    gated = []
    monkeypatch.setattr(data_quality, "gate_arrow", lambda table, chunk, *rest: gated.append(
        (table, chunk.num_rows)) or gate_arrow(table, chunk, *rest))
    landing = ValidatedLanding(warehouse, QualityConfig(), "backfill").land_staged(
        _cohorts_and_touches(tmp_path), {("orders", 0): 7}, "run-staged")
    assert gated == [("retention_cohorts", 2), ("retention_cohorts", 2)]  # the touchpoints were clean: one query
    _assert_landed_as_rows_from_memory_would(warehouse, landing)
    assert not warehouse.connection.execute(
        "SELECT table_name FROM duckdb_tables() WHERE temporary AND table_name LIKE 'staged_%'").fetchall()


def test_staged_rows_reach_a_warehouse_that_is_not_duckdb_a_chunk_at_a_time(tmp_path, warehouse, monkeypatch):
    monkeypatch.setattr(data_quality, "GATE_CHUNK_ROWS", 2)
    warehouse.commit({"touchpoints": [touch("gone"), touch("t1")]})
    committed = []  # (table, rows) of each chunk the warehouse took: never a whole table at once
    landing = ValidatedLanding(_ArrowChunkWarehouse(warehouse, committed), QualityConfig(), "backfill").land_staged(
        _cohorts_and_touches(tmp_path), {("orders", 0): 7}, "run-staged", spill_dir=str(tmp_path / "spill"))
    assert [n for table, n in committed if table == "touchpoints"] == [2, 2]
    assert [n for table, n in committed if table == "retention_cohorts"] == [2]  # what passed the gate
    _assert_landed_as_rows_from_memory_would(warehouse, landing)


def _assert_landed_as_rows_from_memory_would(warehouse, landing):
    assert _stored(warehouse, "touchpoints", "touch_id") == [("t1",), ("t2",), ("t3",)]  # "gone" retracted
    assert _stored(warehouse, "retention_cohorts", "period_index") == [(0,), (2,)]
    quarantined = _stored(warehouse, "quarantine", "row_key, rule")
    assert {json.loads(key)["period_index"] for key, _ in quarantined} == {1, 3}
    assert landing.quarantined == len(quarantined) and landing.landed["touchpoints"] == 4
    assert warehouse.offsets() == {("orders", 0): 7}
    gated = [o for o in landing.outcomes if o.stage == "row_gate"]
    failed = {o.expectation: o for o in gated if not o.success}
    assert failed["active_within_cohort"].element_count == 4
    assert failed["range:retention_rate"].unexpected_count == 1
    assert len([o for o in gated if o.expectation == "active_within_cohort"]) == 1
