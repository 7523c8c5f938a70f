"""The stream's writer (transforms/warehouse.py) when a task fails and its state is restored from a checkpoint
while the worker, and what it knew, lives on: it must neither fail on the older state nor commit before the reads
pass what the warehouse already holds."""
from transforms.dq_suites import QualityConfig
from transforms.warehouse import READ, TICK, _CommitPeriodically, row_batch
from writer_stubs import Bag, Landing, Value

PARTITION = ("orders", 0)


def _writer_state() -> dict:
    return dict(pending=Bag(), last_commit=Value(), caught_up_at=Value(), landed=Value())


def _restore(state: dict) -> dict:
    """A checkpoint of the writer's state, or the state restored from one."""
    return {name: type(s)(s.read()) for name, s in state.items()}


def _landing_writer(target) -> tuple[_CommitPeriodically, dict]:
    """The commit step on `target`, committing at every item, its checks reduced to the commit; and its state."""
    writer = _CommitPeriodically(str(target), commit_every_s=0, hold_after_catch_up_s=0, quality=QualityConfig())
    writer.open()
    writer.quality = Landing(writer.warehouse)
    return writer, _writer_state()


def test_state_restored_behind_the_last_commit_waits_for_the_reads_to_pass_the_stored_offsets(tmp_path):
    writer, state = _landing_writer(tmp_path / "w.duckdb")

    def deliver(item, state):
        return list(writer.process((None, item), **state))

    deliver((READ, PARTITION, 5), state)  # the first item starts the interval
    checkpoint = _restore(state)  # taken before any commit
    assert deliver((TICK,), state)[0]["read"] == {PARTITION: 5}
    assert writer.warehouse.offsets() == {PARTITION: 5}

    # A task failed: the state is the checkpoint's again, and the read resumes from the checkpoint's position.
    restored = _restore(checkpoint)
    assert deliver((READ, PARTITION, 3), restored) == []
    assert deliver((TICK,), restored) == []  # behind the stored offsets: no commit
    assert writer.warehouse.offsets() == {PARTITION: 5}
    deliver((READ, PARTITION, 7), restored)
    assert deliver((TICK,), restored)[0]["read"] == {PARTITION: 7}
    assert writer.warehouse.offsets() == {PARTITION: 7}
    writer.teardown()


def _emission(order_id: str, touches: int, revision: int) -> list[dict]:
    import datetime as dt

    when = dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc)
    return [{"order_id": order_id, "model": model, "touch_index": i, "status": "placed", "customer_id": "C1",
             "order_time": when, "touch_id": f"t{i}", "touch_time": when, "channel": "Email",
             "credit": 1 / touches if model == "linear" else float(i == touches - 1), "revenue_credit": 10.0 / touches,
             "currency": "EUR", "revision": revision, "group_rows": 2 * touches}
            for model in ("linear", "last_touch") for i in range(touches)]


def test_an_emission_split_between_commits_lands_only_whole(tmp_path):
    """An order's rows reach the writer in two bundles with a commit due between them: the first commit lands
    none of them, the next lands them all, and a newer emission replaces the stored one whole."""
    writer, state = _landing_writer(tmp_path / "w.duckdb")
    deliver = lambda item: list(writer.process((None, item), **state))
    stored = lambda: writer.warehouse.connection.execute(
        "SELECT model, count(*), sum(credit), max(revision) FROM order_attribution GROUP BY ALL ORDER BY ALL").fetchall()

    deliver((READ, PARTITION, 1))
    first, second = _emission("o1", 3, revision=1), _emission("o1", 2, revision=2)
    for row in first[:4]:
        deliver(row_batch([("order_attribution", (0,), row)]))
    deliver((TICK,))  # commits the read position, not the partial group
    assert stored() == []
    for row in first[4:] + second[:1]:
        deliver(row_batch([("order_attribution", (0,), row)]))
    deliver((TICK,))
    assert stored() == [("last_touch", 3, 1.0, 1), ("linear", 3, 1.0, 1)]
    for row in second[1:]:
        deliver(row_batch([("order_attribution", (0,), row)]))
    deliver((TICK,))
    assert stored() == [("last_touch", 2, 1.0, 2), ("linear", 2, 1.0, 2)]
    writer.teardown()


def test_a_failed_commit_of_rows_alone_is_reported_as_landing_nothing(tmp_path, caplog, monkeypatch):
    """A commit that carries rows but no new read position (the rest of an emission, a table update) stores the
    offsets the warehouse already holds: which step failed, not the offsets, says whether its rows landed."""
    import pytest

    from test_data_quality import touch

    writer = _CommitPeriodically(str(tmp_path / "w.duckdb"), commit_every_s=0, hold_after_catch_up_s=0,
                                 quality=QualityConfig())
    writer.open()
    state = _writer_state()
    deliver = lambda item: list(writer.process((None, item), **state))
    deliver((READ, PARTITION, 5))
    assert deliver((TICK,))[0]["read"] == {PARTITION: 5}

    def refuse(*args, **kwargs):
        raise OSError("Operation not permitted")

    deliver(row_batch([("touchpoints", (0,), touch("t1"))]))  # pending: the next tick commits it
    for step, told in (("commit", "nothing of this commit landed: no offset advanced past the last good commit "
                                  "(5 records)"),
                       ("publish", "this commit's rows landed with their offsets (5 records), but the publish "
                                   "after it failed")):
        monkeypatch.setattr(writer.warehouse, step, refuse)
        caplog.clear()
        with pytest.raises(OSError):
            deliver((TICK,))
        assert told in caplog.text
        monkeypatch.undo()
    writer.teardown()


def test_the_writer_opens_the_warehouse_at_its_first_item_not_at_setup(tmp_path):
    """Its instance on a subtask that never gets the single key (in another SDK worker) must leave the file alone."""
    target = tmp_path / "w.duckdb"
    writer = _CommitPeriodically(str(target), commit_every_s=0, hold_after_catch_up_s=0, quality=QualityConfig())
    writer.setup()
    writer.teardown()
    assert writer.warehouse is None and not target.exists()
    state = _writer_state()
    list(writer.process((None, (READ, PARTITION, 1)), **state))
    assert writer.warehouse is not None and target.exists()
    writer.teardown()


def test_the_status_file_tells_what_the_last_commit_landed_and_how_long_each_step_took(tmp_path):
    """An operator (and the freshness benchmark) sees a commit that grows with history in its step times."""
    import json

    from test_data_quality import touch
    from transforms.warehouse import status_path

    target = tmp_path / "w.duckdb"
    writer = _CommitPeriodically(str(target), commit_every_s=0, hold_after_catch_up_s=0, quality=QualityConfig())
    state = _writer_state()
    deliver = lambda item: list(writer.process((None, item), **state))
    deliver((READ, PARTITION, 5))
    deliver(row_batch([("touchpoints", (0,), touch("t1")), ("touchpoints", (0,), touch("t2"))]))
    deliver((TICK,))
    status = json.loads(status_path(str(target)).read_text())
    assert (status["records"], status["rows"], status["published"]) == (5, 2, True)
    assert set(status["took_s"]) == {"all", "row_gate", "commit", "checkpoint", "publish"}
    assert 0 < sum(status["took_s"][step] for step in ("row_gate", "commit", "checkpoint", "publish")) \
        <= status["took_s"]["all"]
    writer.teardown()


def _cohort(segment: str, size: int) -> dict:
    import datetime as dt

    return {"cohort_grain": "week", "cohort_start": dt.date(2026, 7, 13), "segment_type": "acquisition_channel",
            "segment": segment, "period_index": 0, "cohort_size": size, "active_customers": size,
            "retention_rate": 1.0, "retention_rate_on_or_after": 1.0, "net_revenue": 44.91,
            "cumulative_revenue_per_customer": 22.46, "currency": "EUR"}


def test_a_whole_table_row_committed_after_the_checkpoint_a_task_is_restored_to_does_not_outlive_the_restore(
        tmp_path):
    """A cohort the writer landed from a course of events the restore discarded is computed no more, so no
    retraction for it ever comes: the writer puts the whole tables back to what it had landed at the checkpoint
    (what test_flink's TaskManager kills caught, one run in four)."""
    writer, state = _landing_writer(tmp_path / "w.duckdb")
    deliver = lambda item, state: list(writer.process((None, item), **state))
    segments = lambda: sorted(row["segment"] for row in writer.warehouse.rows("retention_cohorts"))

    deliver((READ, PARTITION, 5), state)
    deliver((TICK,), state)  # a first commit: the job has caught up, mid-stream from here
    checkpoint = _restore(state)
    deliver(row_batch([("retention_cohorts", (0,), _cohort("(none)", 2))]), state)  # before the link came
    deliver((READ, PARTITION, 7), state)
    deliver((TICK,), state)
    assert segments() == ["(none)"]

    # The TaskManager dies; every step resumes from the checkpoint, and this time the link comes with the session.
    restored = _restore(checkpoint)
    deliver((READ, PARTITION, 8), restored)
    deliver(row_batch([("retention_cohorts", (0,), _cohort("Email", 2))]), restored)
    deliver((TICK,), restored)
    deliver((TICK,), restored)
    assert segments() == ["Email"]
    writer.teardown()


def test_a_whole_table_update_committed_after_the_checkpoint_with_no_new_reads_is_undone_by_a_restore(tmp_path):
    """A commit can carry rows alone (a cohort's update as the watermark passes), with the offsets stored before:
    the reads do not tell that the state is behind it, the count of commits does."""
    writer, state = _landing_writer(tmp_path / "w.duckdb")
    deliver = lambda item, state: list(writer.process((None, item), **state))
    sizes = lambda: [(row["segment"], row["cohort_size"]) for row in writer.warehouse.rows("retention_cohorts")]

    deliver((READ, PARTITION, 5), state)
    deliver(row_batch([("retention_cohorts", (0,), _cohort("Email", 2))]), state)
    deliver((TICK,), state)
    checkpoint = _restore(state)
    deliver(row_batch([("retention_cohorts", (1,), _cohort("Email", 3))]), state)
    deliver((TICK,), state)
    assert sizes() == [("Email", 3)]

    restored = _restore(checkpoint)
    deliver((TICK,), restored)
    assert sizes() == [("Email", 2)]  # as at the checkpoint, until the restored steps compute it again
    deliver(row_batch([("retention_cohorts", (1,), _cohort("Email", 4))]), restored)
    deliver((TICK,), restored)
    assert sizes() == [("Email", 4)]
    writer.teardown()


def test_a_new_worker_on_restored_state_puts_the_whole_tables_back_to_the_checkpoint(tmp_path):
    """The TaskManager (and the SDK worker with it) died: the writer that takes over knows nothing of the commits
    made after the checkpoint, so it puts back what the checkpoint's state says was landed."""
    writer, state = _landing_writer(tmp_path / "w.duckdb")
    deliver = lambda writer, item, state: list(writer.process((None, item), **state))
    deliver(writer, (READ, PARTITION, 5), state)
    deliver(writer, row_batch([("retention_cohorts", (0,), _cohort("Email", 2))]), state)
    deliver(writer, (TICK,), state)
    checkpoint = _restore(state)
    deliver(writer, row_batch([("retention_cohorts", (0,), _cohort("(none)", 1))]), state)
    deliver(writer, (READ, PARTITION, 7), state)
    deliver(writer, (TICK,), state)
    writer.teardown()

    successor, _ = _landing_writer(tmp_path / "w.duckdb")
    restored = _restore(checkpoint)
    deliver(successor, (READ, PARTITION, 6), restored)
    assert deliver(successor, (TICK,), restored) == []  # behind the stored offsets: no commit
    deliver(successor, (READ, PARTITION, 7), restored)
    deliver(successor, (TICK,), restored)
    assert [row["segment"] for row in successor.warehouse.rows("retention_cohorts")] == ["Email"]
    assert successor.warehouse.offsets() == {PARTITION: 7}
    successor.teardown()


def test_a_writer_holding_its_commits_says_which_partitions_hold_them_once_a_minute(tmp_path, caplog, monkeypatch):
    from transforms import warehouse as warehouse_module

    writer, state = _landing_writer(tmp_path / "w.duckdb")
    writer.warehouse.commit({}, {PARTITION: 500, ("orders", 1): 10})
    writer.teardown()
    writer, state = _landing_writer(tmp_path / "w.duckdb")  # a restart: the stored offsets are ahead of the reads
    caplog.set_level("INFO", logger=warehouse_module.log.name)
    now = [1000.0]
    monkeypatch.setattr(warehouse_module.time, "time", lambda: now[0])
    for at, item in [(1000, (READ, PARTITION, 3)), (1001, (READ, ("orders", 1), 10)), (1002, (TICK,)),
                     (1030, (TICK,)), (1070, (TICK,))]:
        now[0] = float(at)
        assert list(writer.process((None, item), **state)) == []
    said = [r.getMessage().split(": ", 1)[1] for r in caplog.records
            if r.getMessage().startswith("holding commits until the reads pass")]
    assert said == ["2 partitions behind (orders[0] by 497, orders[1] by 10)",  # at 1001: once, not at 1002 or 1030
                    "1 partitions behind (orders[0] by 497)"]  # at 1070, a minute on
    writer.teardown()
