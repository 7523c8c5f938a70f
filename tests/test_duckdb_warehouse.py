"""The embedded DuckDB warehouse: tables from the contracts, upserts by primary key, rows and offsets committed
together, and a published copy that another process reads while the writer keeps writing."""
import datetime as dt
import subprocess
import sys
from decimal import Decimal

import duckdb
import pytest

from schemas.contracts import RETRACTED, contracts, views

T0 = dt.datetime(2026, 9, 1, 12, tzinfo=dt.timezone.utc)


def _touch(touch_id, channel="Email", customer="C1"):
    return {"touch_id": touch_id, "customer_key": customer, "touch_time": T0, "kind": "session", "channel": channel,
            "source": "newsletter", "medium": "email", "campaign": "(not set)", "platform": None,
            "view_through": False}


def _dead_letter(offset):
    return {"topic": "orders", "partition": 0, "offset": offset, "kafka_timestamp": T0, "key": None,
            "value": b"\x00\x00\x00\x00\x07\xff", "stage": "decode", "reason": "unknown_schema_id",
            "error": "schema id 7 is not registered", "first_seen": T0}


def _count(warehouse, table):
    return warehouse.connection.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]


def test_every_contract_is_a_table_and_a_row_written_twice_is_one_row_with_the_latest_values(warehouse):
    tables = {row[0] for row in warehouse.connection.execute("SHOW TABLES").fetchall()}
    assert tables == set(contracts()) | {"source_offsets"} | set(views())
    warehouse.commit({"touchpoints": [_touch("t1", "Email"), _touch("t2")]})
    warehouse.commit({"touchpoints": [_touch("t1", "Organic Search")]})
    assert warehouse.connection.execute("SELECT touch_id, channel FROM touchpoints ORDER BY 1").fetchall() == [
        ("t1", "Organic Search"), ("t2", "Email")]
    warehouse.commit({"dead_letters": [_dead_letter(41)]})
    assert [(row["value"], row["reason"]) for row in warehouse.rows("dead_letters", private=True)] == [
        (b"\x00\x00\x00\x00\x07\xff", "unknown_schema_id")]


def _fitted_row(channel, **extra):
    return {"window_start": T0, "window_end": T0 + dt.timedelta(days=7), "model": "markov", "channel": channel,
            "value": 0.5, "share": 0.5, "standard_error": 0.0, "conversions": 2.0, "revenue": Decimal("30.00"),
            "currency": "EUR", "paths": 9, "revision": 1, "group_rows": 1, **extra}


def test_a_file_an_earlier_version_created_gains_the_columns_its_contracts_added_since(tmp_path):
    from transforms.duckdb_warehouse import DuckDBWarehouse

    path = tmp_path / "journeys.duckdb"
    DuckDBWarehouse(path).close()
    with duckdb.connect(str(path)) as older:  # data_driven_attribution as it was before value-weighted effects
        for added in ("revenue_effect", "revenue_share", "share_ci_low", "share_ci_high", "revenue_share_ci_low",
                      "revenue_share_ci_high", "resamples"):  # and the bootstrap's intervals, added later still
            older.execute(f'ALTER TABLE data_driven_attribution DROP COLUMN {added}')
        older.execute("INSERT INTO data_driven_attribution BY NAME SELECT TIMESTAMPTZ '2026-08-01 00:00:00+00' AS "
                      "window_start, window_start + INTERVAL 7 DAY AS window_end, 'markov' AS model, 'Email' AS "
                      "channel, 1.0 AS value, 1.0 AS share, 0.0 AS standard_error, 1.0 AS conversions, 5 AS revenue, "
                      "'EUR' AS currency, 1 AS paths, 1 AS revision, 1 AS group_rows")
    warehouse = DuckDBWarehouse(path)
    try:
        warehouse.commit({"data_driven_attribution": [_fitted_row("Display", revenue_effect=0.8, revenue_share=0.8,
                                                                  share_ci_low=0.6, resamples=100)]})
        assert warehouse.connection.execute(
            "SELECT channel, revenue_effect, revenue_share, share_ci_low, resamples FROM data_driven_attribution "
            "ORDER BY channel").fetchall() == [("Display", 0.8, 0.8, 0.6, 100), ("Email", None, None, None, None)]
    finally:
        warehouse.close()


def test_a_commit_that_breaks_its_connection_raises_its_own_error_not_the_tidying_up_after_it(warehouse):
    def chunks_that_break_the_connection():
        yield [_touch("t1")]
        warehouse.connection.close()  # the tidying up after the failure cannot run on it either
        raise ValueError("the source of these rows failed")

    with pytest.raises(ValueError, match="the source of these rows failed"):
        warehouse.commit({"touchpoints": chunks_that_break_the_connection()})


def test_raw_bytes_stay_in_the_writers_private_store_and_out_of_what_readers_open(warehouse):
    import os

    from transforms.duckdb_warehouse import connect_read_only

    secret = b"raw-customer-id-4711@example.com"
    warehouse.commit({"dead_letters": [{**_dead_letter(41), "key": b"k-" + secret, "value": secret}]})
    warehouse.commit({"dead_letters": [{**_dead_letter(41), "value": secret}]}, {("orders", 0): 42})  # a replay
    assert [(r["key"], r["value"]) for r in warehouse.rows("dead_letters", private=True)] == [(None, secret)]
    assert warehouse.connection.execute("SELECT key, value, reason FROM dead_letters").fetchall() == [
        (None, None, "unknown_schema_id")]
    published = warehouse.publish()
    for path in (warehouse.path, warehouse.private_path):
        assert os.stat(path).st_mode & 0o777 == 0o600, path
    assert secret not in published.read_bytes() and secret not in warehouse.path.read_bytes()
    with connect_read_only(published) as reader:
        assert reader.execute("SELECT value FROM dead_letters").fetchall() == [(None,)]


def test_a_dead_letter_seen_again_keeps_when_it_was_first_seen_and_takes_the_rest(warehouse):
    warehouse.commit({"dead_letters": [_dead_letter(41)]})
    later = dict(_dead_letter(41), error="seen again", first_seen=T0 + dt.timedelta(days=1))
    warehouse.commit({"dead_letters": [later, _dead_letter(42)]})
    stored = warehouse.connection.execute('SELECT "offset", error, first_seen FROM dead_letters ORDER BY 1').fetchall()
    assert stored == [(41, "seen again", T0), (42, "schema id 7 is not registered", T0)]


def test_a_warehouse_whose_tables_duckdb_indexes_by_primary_key_still_takes_upserts(tmp_path):
    """Files written before the tables dropped their PRIMARY KEY keep it; the same commits land in them."""
    from transforms.duckdb_warehouse import DuckDBWarehouse

    path = tmp_path / "older.duckdb"
    with duckdb.connect(str(path)) as older:
        older.execute(contracts()["touchpoints"].duckdb_ddl()[:-2] + ',\n  PRIMARY KEY ("touch_id")\n)')
    warehouse = DuckDBWarehouse(path)
    try:
        warehouse.commit({"touchpoints": [_touch("t1", "Email"), _touch("t2")]})
        warehouse.commit({"touchpoints": [_touch("t1", "Organic Search"), _touch("t3")]})
        assert warehouse.connection.execute("SELECT touch_id, channel FROM touchpoints ORDER BY 1").fetchall() == [
            ("t1", "Organic Search"), ("t2", "Email"), ("t3", "Email")]
        assert warehouse.connection.execute(
            "SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'touchpoints' "
            "AND constraint_type = 'PRIMARY KEY'").fetchone() == (1,)
    finally:
        warehouse.close()


def test_rows_and_offsets_are_committed_together_or_not_at_all(warehouse):
    warehouse.commit({"touchpoints": [_touch("t1")]}, {("web_sessions", 0): 10, ("web_sessions", 1): 4})
    broken = dict(_touch("t2"), channel=None)  # channel is NOT NULL
    with pytest.raises(duckdb.ConstraintException):
        warehouse.commit({"touchpoints": [_touch("t3"), broken]}, {("web_sessions", 0): 20})
    assert _count(warehouse, "touchpoints") == 1
    assert warehouse.offsets() == {("web_sessions", 0): 10, ("web_sessions", 1): 4}
    warehouse.commit({}, {("web_sessions", 0): 7, ("web_sessions", 1): 9})  # a replayed, older offset
    assert warehouse.offsets() == {("web_sessions", 0): 10, ("web_sessions", 1): 9}


def test_a_batch_that_brings_a_key_twice_is_refused_and_lands_nothing(warehouse):
    """No key index holds a key unique in DuckDB: the commit itself refuses a batch with a key twice."""
    warehouse.commit({"touchpoints": [_touch("t1")]}, {("web_sessions", 0): 10})
    with pytest.raises(ValueError, match="more than once"):
        warehouse.commit({"touchpoints": [_touch("t2", "Email"), _touch("t2", "Organic Search")]},
                         {("web_sessions", 0): 20})
    assert warehouse.connection.execute("SELECT touch_id FROM touchpoints").fetchall() == [("t1",)]
    assert warehouse.offsets() == {("web_sessions", 0): 10}


READER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print(con.execute("SELECT count(*) FROM touchpoints").fetchone()[0])
"""


def _read_in_another_process(path):
    done = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout.strip(), done.stderr


def test_another_process_reads_the_published_copy_while_the_writer_keeps_writing(warehouse):
    warehouse.commit({"touchpoints": [_touch(f"t{i}") for i in range(3)]})
    code, _, error = _read_in_another_process(warehouse.path)
    assert code != 0 and "lock" in error.lower(), "DuckDB keeps other processes out of the writer's own file"
    published = warehouse.publish()
    assert _read_in_another_process(published)[:2] == (0, "3")
    warehouse.commit({"touchpoints": [_touch(f"t{i}") for i in range(3, 5)]})  # writer still open
    assert _read_in_another_process(published)[:2] == (0, "3"), "readers see whole commits only when published"
    warehouse.publish()
    assert _read_in_another_process(published)[:2] == (0, "5")


LONG_READER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print(con.execute("SELECT count(*) FROM touchpoints").fetchone()[0], flush=True)
time.sleep(3)
print(con.execute("SELECT count(*) FROM touchpoints").fetchone()[0], flush=True)
"""


def test_a_reader_that_keeps_its_connection_open_does_not_block_publishing(warehouse):
    warehouse.commit({"touchpoints": [_touch("t1")]})
    published = warehouse.publish()
    reader = subprocess.Popen([sys.executable, "-c", LONG_READER, str(published)], stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "1"
    warehouse.commit({"touchpoints": [_touch("t2")]})
    warehouse.publish()  # while the reader holds the previous copy open
    assert reader.stdout.readline().strip() == "1", "an open reader keeps its consistent copy"
    assert reader.wait(timeout=30) == 0
    assert _read_in_another_process(published)[:2] == (0, "2")


def test_a_retracted_row_is_deleted_and_a_retraction_of_a_missing_row_changes_nothing(warehouse):
    daily = {"date": T0.date(), "model": "linear", "channel": "Display", "currency": "EUR", "conversions": 1.0,
             "revenue": 100.0}
    warehouse.commit({"channel_attribution_daily": [daily, dict(daily, channel="Email")]})
    gone = dict(daily, conversions=0.0, revenue=0.0, **{RETRACTED: True})
    warehouse.commit({"channel_attribution_daily": [gone, dict(gone, channel="Referral")]})
    assert warehouse.connection.execute("SELECT channel, revenue FROM channel_attribution_daily").fetchall() == [
        ("Email", Decimal("100.00"))]


def _cohort(period, active):
    return {"cohort_grain": "month", "cohort_start": T0.date().replace(day=1), "segment_type": "all",
            "segment": "all", "period_index": period, "cohort_size": 4, "active_customers": active,
            "retention_rate": active / 4, "retention_rate_on_or_after": active / 4, "net_revenue": 10.0 * active,
            "cumulative_revenue_per_customer": 1.0, "currency": "EUR"}


def test_bi_views_answer_from_the_published_copy(warehouse):
    daily = {"date": T0.date(), "model": "linear", "currency": "EUR", "conversions": 1.0}
    warehouse.commit({"channel_attribution_daily": [dict(daily, channel="Paid Social", revenue=300.0),
                                                    dict(daily, channel="Email", revenue=100.0)],
                      "channel_spend": [{"month": T0.date().replace(day=1), "channel": "Paid Social",
                                         "currency": "EUR", "spend": 200.0}],
                      "retention_cohorts": [_cohort(0, 4), _cohort(2, 1)]})
    published = warehouse.publish()
    with duckdb.connect(str(published), read_only=True) as reader:
        assert reader.execute("SELECT channel, revenue_share, spend, revenue_per_spend, roi FROM channel_roi "
                              "ORDER BY channel").fetchall() == [
            ("Email", 0.25, None, None, None), ("Paid Social", 0.75, Decimal("200.00"), 1.5, 0.5)]
        assert reader.execute("SELECT cohort_size, period_0, period_1, period_2 FROM cohort_retention_matrix"
                              ).fetchall() == [(4, 1.0, None, 0.25)]


def _credit_rows(order_id, touches, revision=0, models=("linear", "first_touch")):
    """One emission of an order's rows: every model over `touches` touches."""
    return [{"order_id": order_id, "model": model, "touch_index": i, "status": "placed", "customer_id": "C1",
             "order_time": T0, "touch_id": f"t{i}", "touch_time": T0, "channel": "Email",
             "credit": 1 / touches if model == "linear" else float(i == 0), "revenue_credit": 100.0 / touches,
             "currency": "EUR", "revision": revision, "group_rows": touches * len(models)}
            for model in models for i in range(touches)]


def test_an_order_landed_again_with_a_shorter_path_leaves_none_of_the_longer_one_behind(warehouse):
    """A stream after a backfill may see fewer touches for an order: its rows replace the order's group
    whole, or the credits of the old path's extra touches would stay and sum past 1; an older emission reaching the
    warehouse after a newer one changes nothing."""
    warehouse.commit({"order_attribution": _credit_rows("o1", 3) + _credit_rows("o2", 2)})
    warehouse.commit({"order_attribution": _credit_rows("o1", 2, revision=1)})
    warehouse.commit({"order_attribution": _credit_rows("o1", 4, revision=0)})  # an older one, late: no effect
    rows = warehouse.connection.execute("SELECT order_id, model, count(*), sum(credit), max(revision) "
                                        "FROM order_attribution GROUP BY ALL ORDER BY ALL").fetchall()
    assert rows == [("o1", "first_touch", 2, 1.0, 1), ("o1", "linear", 2, pytest.approx(1.0), 1),
                    ("o2", "first_touch", 2, 1.0, 0), ("o2", "linear", 2, pytest.approx(1.0), 0)]


def test_a_group_that_spans_two_chunks_of_one_commit_replaces_the_stored_group_whole(warehouse):
    """A backfill's commit takes a table in chunks (one at a time, never the whole table in memory); an order whose
    rows fall in two chunks replaces the stored order once: the second chunk keeps the first chunk's rows."""
    from transforms.duckdb_warehouse import arrow_batch

    warehouse.commit({"order_attribution": _credit_rows("o1", 3) + _credit_rows("o2", 2)})
    newer = _credit_rows("o1", 4, revision=1)
    chunks = iter([arrow_batch("order_attribution", newer[:3]), arrow_batch("order_attribution", newer[3:])])
    warehouse.commit({"order_attribution": chunks})
    rows = warehouse.connection.execute("SELECT order_id, model, count(*), sum(credit), max(revision) "
                                        "FROM order_attribution GROUP BY ALL ORDER BY ALL").fetchall()
    assert rows == [("o1", "first_touch", 4, 1.0, 1), ("o1", "linear", 4, pytest.approx(1.0), 1),
                    ("o2", "first_touch", 2, 1.0, 0), ("o2", "linear", 2, pytest.approx(1.0), 0)]
    # what the commit gathered its rows in leaves with it: the connection holds only the contracts' tables
    count = lambda sql: warehouse.connection.execute(sql).fetchone()[0]
    assert count("SELECT count(*) FROM duckdb_tables() WHERE temporary") == 0
    assert count("SELECT count(*) FROM duckdb_views() WHERE temporary AND NOT internal") == 0


def _spelled(limit: str) -> str:
    """How this DuckDB version gives a memory limit back."""
    as_set = duckdb.connect()
    as_set.execute("SET memory_limit = ?", [limit])
    return as_set.execute("SELECT current_setting('memory_limit')").fetchone()[0]


def test_the_writers_memory_limit_is_bounded_by_default_and_the_environment_chooses_another(tmp_path, monkeypatch):
    from transforms.duckdb_warehouse import DEFAULT_MEMORY_LIMIT, DuckDBWarehouse

    setting = "SELECT current_setting('memory_limit')"
    monkeypatch.delenv("JOURNEYS_DUCKDB_MEMORY_LIMIT", raising=False)
    warehouse = DuckDBWarehouse(tmp_path / "default.duckdb")
    try:
        assert warehouse.connection.execute(setting).fetchone()[0] == _spelled(DEFAULT_MEMORY_LIMIT)
        assert _spelled(DEFAULT_MEMORY_LIMIT) != duckdb.connect().execute(setting).fetchone()[0]  # not DuckDB's own
    finally:
        warehouse.close()
    monkeypatch.setenv("JOURNEYS_DUCKDB_MEMORY_LIMIT", "3GB")
    warehouse = DuckDBWarehouse(tmp_path / "default.duckdb")
    try:
        assert warehouse.connection.execute(setting).fetchone()[0] == _spelled("3GB")
    finally:
        warehouse.close()


def test_a_commit_in_chunks_lands_under_a_small_memory_limit(tmp_path, monkeypatch):
    from transforms.duckdb_warehouse import DuckDBWarehouse, arrow_batch

    monkeypatch.setenv("JOURNEYS_DUCKDB_MEMORY_LIMIT", "64MB")
    warehouse = DuckDBWarehouse(tmp_path / "limited.duckdb")
    try:
        assert warehouse.connection.execute("SELECT current_setting('memory_limit')").fetchone()[0] == _spelled("64MB")
        chunks = lambda channel: (arrow_batch("touchpoints", [_touch(f"t{n}-{i}", channel) for i in range(20_000)])
                                  for n in range(10))
        warehouse.commit({"touchpoints": chunks("Email")})
        warehouse.commit({"touchpoints": chunks("Referral")})  # every key again: the upsert's joins spill too
        assert warehouse.connection.execute("SELECT channel, count(*) FROM touchpoints GROUP BY ALL").fetchall() == [
            ("Referral", 200_000)]
    finally:
        warehouse.close()


def test_a_group_waits_until_all_its_rows_are_in_and_an_older_fragment_is_dropped():
    from transforms.warehouse import whole_groups

    older, newer = _credit_rows("o1", 3, revision=1), _credit_rows("o1", 2, revision=2)
    split = _credit_rows("o2", 2)
    items = [((0,), row) for row in older[:2] + newer + split[:3]]
    whole, waiting = whole_groups("order_attribution", items)
    assert sorted((r["order_id"], r["revision"]) for _, r in whole) == [("o1", 2)] * 4
    assert [r for _, r in waiting] == split[:3]  # o1's fragment of revision 1 is superseded: dropped
    whole, waiting = whole_groups("order_attribution", waiting + [((1,), split[3])])
    assert len(whole) == 4 and waiting == []


def test_latest_rows_keeps_each_group_from_its_newest_emission_only():
    from transforms.warehouse import latest_rows

    older, newer = _credit_rows("o1", 3, revision=1, models=("linear",)), _credit_rows("o1", 2, revision=2,
                                                                                     models=("linear",))
    # (pane index, row): an emission's rows may come in different panes, and stay together
    rows = latest_rows("order_attribution", [((3,), older[0]), ((1,), newer[0]), ((2,), newer[1]),
                                             ((0,), older[2])])
    assert sorted((r["touch_index"], r["revision"]) for r in rows) == [(0, 2), (1, 2)]


def _window_fit(channels, revision: int, retracted: bool = False) -> list[dict]:
    start = dt.datetime(2026, 5, 7, tzinfo=dt.timezone.utc)
    return [{"window_start": start, "window_end": start + dt.timedelta(days=7), "model": model, "channel": channel,
             "value": 0.5, "share": 1 / len(channels), "standard_error": 0.0, "conversions": 1.0, "revenue": 10.0,
             "paths": 2, "revision": revision, "group_rows": 2 * len(channels), "currency": "EUR",
             **({RETRACTED: True} if retracted else {})}
            for model in ("markov", "shapley") for channel in channels]


def test_a_later_firing_of_a_window_supersedes_an_earlier_one_in_the_same_commit(warehouse):
    """A refit after a retraction holds fewer paths, so its revision is lower; its firing is the later one, and
    it replaces the window's rows (here it empties the window), also when both reach one commit."""
    from transforms.warehouse import latest_rows, whole_groups

    fit, emptied = _window_fit(["Direct", "Email"], revision=2 << 32), _window_fit(["Direct", "Email"], 1, True)
    warehouse.commit({"data_driven_attribution": fit})
    items = [((0,), row) for row in fit] + [((1,), row) for row in emptied[:3]]
    whole, waiting = whole_groups("data_driven_attribution", items)
    assert (len(whole), waiting) == (len(fit), [((1,), row) for row in emptied[:3]])  # the later one, not yet whole
    whole, waiting = whole_groups("data_driven_attribution", items + [((1,), emptied[3])])
    assert waiting == []
    warehouse.commit({"data_driven_attribution": latest_rows("data_driven_attribution", whole)})
    assert warehouse.connection.execute("SELECT count(*) FROM data_driven_attribution").fetchone() == (0,)


def test_a_warehouse_path_with_quotes_publishes_and_is_read_back(tmp_path):
    from transforms.duckdb_warehouse import DuckDBWarehouse, connect_read_only

    folder = tmp_path / "it's \"here\"; DROP TABLE customers; --"
    warehouse = DuckDBWarehouse(folder / "o'brien.duckdb")
    warehouse.commit({}, {("orders", 0): 3})
    published = warehouse.publish()
    warehouse.close()
    with connect_read_only(published) as reader:
        assert reader.execute("SELECT next_offset FROM source_offsets").fetchall() == [(3,)]
        assert reader.execute("SELECT count(*) FROM customers").fetchone() == (0,)


def test_only_another_process_writing_the_file_counts_as_held_by_a_writer(tmp_path):
    import subprocess
    import sys

    import duckdb

    from transforms.duckdb_warehouse import DuckDBWarehouse, held_by_a_writer

    path = tmp_path / "journeys.duckdb"
    DuckDBWarehouse(path).close()
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(60)", str(path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(duckdb.Error) as refused:
            DuckDBWarehouse(path)
        assert held_by_a_writer(refused.value)
    finally:
        holder.kill()
        holder.wait()
    assert not held_by_a_writer(duckdb.IOException("Corrupt database file: checksum mismatch in block at 12288"))
    assert not held_by_a_writer(ValueError("Could not set lock on file"))  # DuckDB's errors only
