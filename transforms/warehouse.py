"""WriteToWarehouse: a stream's table rows and read positions → periodic commits to DuckDB or BigQuery.

One writer (a single key) buffers rows in Beam state and, every `commit_every_s` of wall time, commits the newest
row of each primary key together with the source offsets read so far, through the data-quality gate
(transforms/data_quality.py): one commit, a checkpoint, then a publish unless a block-severity expectation failed.

After a restart the job recomputes rows the warehouse already holds: on Flink from its last checkpoint (state and
read positions restored), on the local runners from the topics' start (they keep keyed state in memory only). The
writer holds its commits until it has read past the offsets stored by the last run (after a replay, plus
`hold_after_catch_up_s`: one table update), so readers never see a table step back to an older value; the rows it
then writes are the same as or newer than those stored, and the upserts replace them: nothing lost, nothing counted
twice. A whole table's row landed after the checkpoint a job resumes from may never be computed again (it came from
a course of events the restore discarded): the writer's state holds the whole tables as it landed them, and its
first commit after a restore puts them back.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import pickle
import time
from pathlib import Path

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms.periodicsequence import PeriodicImpulse
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import Timestamp

from schemas.contracts import RETRACTED, contract
from transforms.bigquery_warehouse import BigQueryTarget, BigQueryWarehouse
from transforms.data_quality import ValidatedLanding
from transforms.dq_suites import QualityConfig
from transforms import liveness
from transforms.duckdb_warehouse import DuckDBWarehouse
from transforms.whole_table import WHOLE_TABLES

log = logging.getLogger("journeys.warehouse")
READ = "__read__"  # the tag of a read-position item among the table rows
ROWS = "__rows__"  # the tag of a row_batch
TICK = "__tick__"  # the tag of the ticker's items: a chance to commit while no rows or positions arrive


def open_warehouse(target: str | Path | BigQueryTarget):
    """A DuckDB file path, or a BigQuery target: both commit(rows, offsets), offsets(), publish(), close()."""
    return BigQueryWarehouse(target) if isinstance(target, BigQueryTarget) else DuckDBWarehouse(target)


def latest_rows(table: str, rows) -> list[dict]:
    """One row per primary key: the last (a correction or a later update supersedes). `rows` are rows, or (order,
    row) pairs where order is what "later" means. In a newer_revision_only table the highest revision is the last
    whatever the order (its emissions come from many keys, whose panes say nothing about each other); elsewhere a
    revision only breaks ties, as a later firing of a window knows more even when it holds fewer paths. In a table
    with a replace_group, a group's rows come from its newest emission only."""
    table_contract = contract(table)
    key = table_contract.primary_key
    ranked = []
    for item in rows:
        order, row = item if isinstance(item, tuple) else ((), item)
        revision = row.get("revision", 0)
        ranked.append(((revision, *order) if table_contract.newer_revision_only else (*order, revision), row))
    if table_contract.replace_group:
        # In a newer_revision_only table an emission is one revision of the group, its rows perhaps in different
        # panes; elsewhere it is one firing.
        emission = (lambda rank: rank[0]) if table_contract.newer_revision_only else (lambda rank: rank)
        group = lambda row: tuple(row[g] for g in table_contract.replace_group)
        newest: dict = {}
        for rank, row in ranked:
            newest[group(row)] = max(newest.get(group(row), emission(rank)), emission(rank))
        ranked = [(rank, row) for rank, row in ranked if emission(rank) == newest[group(row)]]
    latest: dict = {}
    for rank, row in ranked:
        known = latest.get(tuple(row[k] for k in key))
        if known is None or rank >= known[0]:
            latest[tuple(row[k] for k in key)] = (rank, row)
    return [row for _, row in latest.values()]


def whole_groups(table: str, items: list) -> tuple[list, list]:
    """(order, row) items of `table` → (those of groups whose rows of a revision are all here, those still waiting
    for rows of their group). A table without replace_group has no groups: everything is whole. Rows of one emission
    can reach a writer in different bundles; a group landed in part would replace the stored one with a fragment."""
    table_contract = contract(table)
    if not table_contract.group_size:
        return items, []
    key, group = table_contract.primary_key, table_contract.replace_group
    emissions: dict = {}
    for order, row in items:  # as latest_rows ranks them: by revision, or by firing
        rank = row["revision"] if table_contract.newer_revision_only else (*order, row["revision"])
        emissions.setdefault((tuple(row[g] for g in group), rank), {})[tuple(row[k] for k in key)] = (order, row)
    complete = {emission for emission, rows in emissions.items()
                if len(rows) >= next(iter(rows.values()))[1][table_contract.group_size]}
    newest_whole: dict = {}
    for group_key, rank in complete:
        newest_whole[group_key] = max(newest_whole.get(group_key, rank), rank)
    whole, waiting = [], []
    for (group_key, rank), rows in emissions.items():
        if (group_key, rank) in complete:
            whole.extend(rows.values())
        elif group_key not in newest_whole or rank > newest_whole[group_key]:  # else superseded by a whole one
            waiting.extend(rows.values())
    return whole, waiting


def row_batch(rows: list[tuple[str, tuple, dict]]) -> tuple:
    """The writer's item for (table, order, row) rows: pickled together in the parallel stages, so that the writer
    (a single key, one process) decodes and stores one value where it would pickle every row into its state."""
    return ROWS, pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)


def rows_of(batch_item: tuple) -> list[tuple[str, tuple, dict]]:
    return pickle.loads(batch_item[1])


class _TagRows(beam.DoFn):
    """(table, (pane index,), row): a later firing of an updating table supersedes an earlier one. Before the rows
    leave their windowing, which drops the pane."""

    def __init__(self, table: str):
        self.table = table

    def process(self, row, pane=beam.DoFn.PaneInfoParam):
        yield self.table, (pane.index,), row


class _BatchRows(beam.DoFn):
    """A bundle's tagged rows (in the global window) → one row_batch."""

    def start_bundle(self):
        self.rows: list = []
        self.earliest = None

    def process(self, tagged, timestamp=beam.DoFn.TimestampParam):
        self.rows.append(tagged)
        self.earliest = timestamp if self.earliest is None else min(self.earliest, timestamp)

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        if self.rows:
            yield WindowedValue((None, row_batch(self.rows)), self.earliest, [GlobalWindow()])


class _ReadPositions(beam.DoFn):
    """Per bundle, the next offset of every partition it read: a handful of items, not one per record."""

    def start_bundle(self):
        self.positions: dict = {}
        self.earliest = None

    def process(self, message, timestamp=beam.DoFn.TimestampParam):
        partition = (message.topic, message.partition)
        self.positions[partition] = max(self.positions.get(partition, 0), message.offset + 1)
        self.earliest = timestamp if self.earliest is None else min(self.earliest, timestamp)

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        for partition, next_offset in self.positions.items():
            yield WindowedValue((None, (READ, partition, next_offset)), self.earliest, [GlobalWindow()])


HOLDING_LOG_EVERY_S = 60.0


class _CommitPeriodically(beam.DoFn):
    """Commits from process(), when an item finds the last commit `commit_every_s` old. A ticker keeps items coming
    while the topics are quiet. Not a processing-time timer: Prism 2.77 at times never fired one (a stream that
    waited after a restart stopped committing for good)."""
    PENDING = BagStateSpec("pending", PickleCoder())
    LAST_COMMIT = ReadModifyWriteStateSpec("last_commit", PickleCoder())  # wall time of the last commit (or start)
    CAUGHT_UP_AT = ReadModifyWriteStateSpec("caught_up_at", PickleCoder())
    # (commits made, {whole table: {key: row}} as landed): restored with the rest of the state, it tells the writer
    # that a checkpoint it resumes from is behind commits it made, and what the whole tables held at that checkpoint.
    LANDED = ReadModifyWriteStateSpec("landed", PickleCoder())

    def __init__(self, target, commit_every_s: float, hold_after_catch_up_s: float, quality: QualityConfig):
        self.target = target
        self.commit_every_s = commit_every_s
        self.hold_after_catch_up_s = hold_after_catch_up_s
        self.quality_config = quality
        self.warehouse = None

    def open(self):
        """Opens the warehouse. From the first item, not setup(): the writer's instance on every other subtask
        (another SDK worker process, when a stream runs one per slot) would try to open a DuckDB file the one
        with the single key holds, and fail."""
        self.warehouse = open_warehouse(self.target)
        self.quality = ValidatedLanding(self.warehouse, self.quality_config, "stream")
        self.stored = self.warehouse.offsets()  # where the last run's commits ended
        self.stale_checked: set[str] = set()  # whole tables whose stored rows this job has reconciled
        self.committed = dict(self.stored)
        self.commits = None  # this worker's count of the job's commits; None until it has made one
        self.read_past_stored = False  # this worker has read past the stored offsets (at once when none are)
        self.said_holding_at = 0.0  # when it last said which partitions hold its commits
        self.restore_whole = False  # the next commit puts the whole tables back to the restored state's own
        if self.stored:
            log.info("resuming: the last run committed %d records; holding commits until the reads pass them",
                     sum(self.stored.values()))

    def teardown(self):
        if self.warehouse is not None:
            self.warehouse.close()

    def process(self, element, pending=beam.DoFn.StateParam(PENDING),
                last_commit=beam.DoFn.StateParam(LAST_COMMIT), caught_up_at=beam.DoFn.StateParam(CAUGHT_UP_AT),
                landed=beam.DoFn.StateParam(LANDED)):
        liveness.beat()
        if self.warehouse is None:
            self.open()
        # The arriving item goes to the next commit, not this one: the other rows of its emission (an order's
        # credits) most likely follow it (whole_groups holds a group back until they have).
        yield from self._commit_if_due(pending, last_commit, caught_up_at, landed)
        if element[1][0] != TICK:
            pending.add(element[1])

    def _commit_if_due(self, pending, last_commit, caught_up_at, landed):
        now = time.time()
        last = last_commit.read()
        if last is None:
            last_commit.write(now)
            return
        if now - last < self.commit_every_s:
            return
        last_commit.write(now)
        items = list(pending.read())
        read: dict = {}
        rows: dict[str, list] = {}
        for item in items:
            if item[0] == READ:
                _, partition, next_offset = item
                read[partition] = max(read.get(partition, 0), next_offset)
            else:
                for table, order, row in rows_of(item):
                    rows.setdefault(table, []).append((order, row))
        commits, whole_view = landed.read() or (0, {})
        if self.commits is not None and commits < self.commits:
            # State older than this worker's last commit: a task failed and its state was restored from a
            # checkpoint, while this worker (and what it knew) lived on. Start over as after a restart.
            log.info("state restored from a checkpoint behind this worker's last commit: holding commits until "
                     "the reads pass the stored offsets again")
            self.stored, self.commits, self.read_past_stored = self.warehouse.offsets(), None, False
            self.committed = dict(self.stored)
        since = caught_up_at.read()
        if not self.read_past_stored or since is None:
            if not all(read.get(p, 0) >= offset for p, offset in self.stored.items()):
                self._say_holding(read, now)
                return  # still reading what the warehouse holds: its rows would step back to older values
            if since is None:  # state rebuilt by a replay: let every whole table fire in full once
                since = now - (self.hold_after_catch_up_s if not self.stored else 0)
                caught_up_at.write(since)
            elif not self.read_past_stored:  # state restored from a checkpoint, perhaps behind commits made
                self.restore_whole = True
            self.read_past_stored = True
        if now - since < self.hold_after_catch_up_s:
            return  # still replaying what the warehouse holds: wait
        latest, waiting = {}, []
        for table, table_rows in rows.items():
            whole, incomplete = whole_groups(table, table_rows)
            latest[table] = latest_rows(table, whole)
            waiting += [(table, order, row) for order, row in incomplete]
        latest = {table: table_rows for table, table_rows in latest.items() if table_rows}
        if not latest and not self.restore_whole and not any(read.get(p, 0) > self.committed.get(p, 0)
                                                             for p in read):
            return  # nothing new since the last commit
        if self.restore_whole:
            self._restore_whole_tables(latest, whole_view)
        elif self.stored:
            self._retract_stale(latest)
        started = time.perf_counter()
        try:
            landing = self.quality.land(latest, read)
        except Exception as error:
            self._stop_on(error, read)
            raise
        where = landing.published or "not published: a block-severity expectation failed"
        self.committed = dict(read)
        self.commits, self.restore_whole = commits + 1, False
        landed.write((self.commits, _landed_whole(whole_view, latest)))
        last_commit.write(time.time())  # the interval runs from the end of a commit, which may take seconds
        pending.clear()
        # Read positions are kept for the next commit: offsets are stored as "read up to", never backwards.
        for partition, next_offset in read.items():
            pending.add((READ, partition, next_offset))
        if waiting:  # the rest of their group comes with the next items
            pending.add(row_batch(waiting))
        took = time.perf_counter() - started
        log.info("committed %d rows of %d tables and offsets of %d partitions (%d records read) in %.2f s → %s",
                 sum(map(len, latest.values())), len(latest), len(read), sum(read.values()), took, where)
        write_status(self.target, read, landing, took, sum(map(len, latest.values())))
        yield {"rows": {table: len(table_rows) for table, table_rows in latest.items()}, "read": read,
               "quarantined": landing.quarantined, "published": landing.published is not None}

    def _say_holding(self, read: dict, now: float) -> None:
        """Once a minute while commits are held: which partitions the reads have not passed yet, and by how much
        (a partition that never moves is one the stream cannot read: journeys stream names it at launch)."""
        if now - self.said_holding_at < HOLDING_LOG_EVERY_S:
            return
        self.said_holding_at = now
        behind = sorted((p, offset - read.get(p, 0)) for p, offset in self.stored.items() if read.get(p, 0) < offset)
        log.info("holding commits until the reads pass the stored offsets: %d partitions behind (%s)", len(behind),
                 ", ".join(f"{topic}[{number}] by {count:,}" for (topic, number), count in behind[:10]))

    def _retract_stale(self, latest: dict[str, list[dict]]) -> None:
        """The first commit after a restart: a whole table's stored keys that this job's firings no longer produce
        are the last run's, computed from fewer events (a cohort whose only member has since moved): retracted,
        as the last run would have retracted them. The hold before this commit let every whole table fire in full."""
        for table in sorted((WHOLE_TABLES & latest.keys()) - self.stale_checked):
            key = contract(table).primary_key
            produced = {_key(row, key) for row in latest[table]}
            stale = [{**row, RETRACTED: True} for row in self.warehouse.rows(table) if _key(row, key) not in produced]
            if stale:
                log.info("%s: retracting %d rows the last run landed and this one no longer computes", table,
                         len(stale))
                latest[table] = latest[table] + stale
            self.stale_checked.add(table)

    def _restore_whole_tables(self, latest: dict[str, list[dict]], whole_view: dict) -> None:
        """The first commit after a restore from a checkpoint: the whole tables go back to what the writer had
        landed by then, and on from there with this commit's rows. Rows it landed after the checkpoint came from a
        course of events the restore discarded; the restored steps will not compute them again, so no update or
        retraction of them would ever come (a cohort under "(none)" whose member's link has now come first)."""
        for table in sorted(WHOLE_TABLES):
            key = contract(table).primary_key
            fresh = {_key(row, key) for row in latest.get(table, [])}
            at_checkpoint = whole_view.get(table, {})
            restored = [row for row_key, row in at_checkpoint.items() if row_key not in fresh]
            stale = [{**row, RETRACTED: True} for row in self.warehouse.rows(table)
                     if _key(row, key) not in fresh and _key(row, key) not in at_checkpoint]
            if stale:
                log.info("%s: retracting %d rows landed after the checkpoint the job resumed from", table, len(stale))
            if restored or stale:
                latest[table] = latest.get(table, []) + restored + stale
        self.stale_checked |= WHOLE_TABLES

    def _stop_on(self, error: Exception, read: dict) -> None:
        """One line for the on-call person: where, what failed, and where the stored offsets stand. The job then
        fails rather than read on with nowhere to land; a restart resumes from the stored offsets."""
        try:
            stored = self.warehouse.offsets()
        except Exception:  # noqa: BLE001 - the warehouse may not answer at all
            stored = None
        # Which step failed, not the stored offsets, says whether the rows landed: a commit of rows alone carries
        # offsets the warehouse already holds.
        if self.quality.step == "commit":
            what = ("nothing of this commit landed: no offset advanced past the last good commit"
                    + (f" ({sum(stored.values()):,} records)" if stored is not None else ""))
        else:
            what = ("this commit's rows landed with their offsets"
                    + (f" ({sum(stored.values()):,} records)" if stored is not None else "")
                    + f", but the {self.quality.step} after it failed: readers keep the last published copy")
        log.error("warehouse write failed at %s: %s: %s. %s. The job stops; restart it once the warehouse is "
                  "writable.", self.target, type(error).__name__, error, what)


def status_path(target) -> Path | None:
    """Where a stream's writer reports its last commit, beside a DuckDB warehouse (a BigQuery one is queried)."""
    return None if isinstance(target, BigQueryTarget) else Path(target).with_suffix(".status.json")


def write_status(target, read: dict, landing, took_s: float, rows: int) -> None:
    """The last commit as an operator (or `make demo`) reads it while the warehouse file is the writer's: records
    read and committed, whether readers got a copy, what held it back, and how long it took by step (a commit that
    grows with history shows there first). Replaced whole, never half written."""
    path = status_path(target)
    if path is None:
        return
    status = {"committed_at": dt.datetime.now(dt.timezone.utc).isoformat(), "records": sum(read.values()),
              "published": landing.published is not None, "quarantined": landing.quarantined,
              "blocked": sorted({f"{o.table}: {o.expectation}" for o in landing.blocked}),
              "warned": sorted({f"{o.table}: {o.expectation}" for o in landing.warned}),
              "rows": rows, "took_s": {"all": round(took_s, 3), **{step: round(seconds, 3)
                                                                   for step, seconds in landing.seconds.items()}}}
    aside = path.with_name(f".{path.name}.{os.getpid()}")
    aside.write_text(json.dumps(status, indent=1) + "\n")
    os.replace(aside, path)


def _landed_whole(whole_view: dict, latest: dict[str, list[dict]]) -> dict:
    """{whole table: {key: row}} after a commit of `latest`: what a restore to the next checkpoint puts back. A new
    dict: the state's value may be the one a checkpoint holds."""
    view = {table: dict(rows) for table, rows in whole_view.items()}
    for table in WHOLE_TABLES & latest.keys():
        key = contract(table).primary_key
        rows = view.setdefault(table, {})
        for row in latest[table]:
            if row.get(RETRACTED):
                rows.pop(_key(row, key), None)
            else:
                rows[_key(row, key)] = row
    return view


def _key(row: dict, key: tuple[str, ...]) -> tuple:
    """A primary key comparable between a computed row and a stored one (dates may come as text or as dates)."""
    return tuple(row[k].isoformat() if hasattr(row[k], "isoformat") else str(row[k]) for k in key)


class WriteToWarehouse(beam.PTransform):
    """{table name: rows} and the source's messages → periodic commits; outputs one summary per commit."""

    def __init__(self, target, commit_every_s: float = 10.0, hold_after_catch_up_s: float = 60.0,
                 quality: QualityConfig = QualityConfig()):
        super().__init__()
        self.target = target
        self.commit_every_s = commit_every_s
        self.hold_after_catch_up_s = hold_after_catch_up_s
        self.quality = quality

    def expand(self, inputs):
        tables, messages = inputs
        # Each input leaves its own windowing before they meet: Flatten wants one, and Prism panics on a mix.
        tagged = [rows | f"Tag{name}" >> beam.ParDo(_TagRows(name))
                  | f"Unwindow{name}" >> beam.WindowInto(GlobalWindows())
                  | f"Batch{name}" >> beam.ParDo(_BatchRows()) for name, rows in tables.items()]
        positions = messages | "ReadPositions" >> beam.ParDo(_ReadPositions())
        ticks = (messages.pipeline
                 | "Ticker" >> PeriodicImpulse(start_timestamp=Timestamp.now(), fire_interval=self.commit_every_s)
                 | "Tick" >> beam.Map(lambda _: (None, (TICK,)))
                 | "UnwindowTicks" >> beam.WindowInto(GlobalWindows()))
        return ((*tagged, positions, ticks) | "Gather" >> beam.Flatten()
                | "Commit" >> beam.ParDo(_CommitPeriodically(self.target, self.commit_every_s,
                                                             self.hold_after_catch_up_s, self.quality)))
