"""WholeTables: tables over every customer (retention_cohorts, social_impact, social_impact_effects), kept as
running totals.

Each customer's profile contributes sums to a few groups (a cohort and segment, a platform and group): counts and
amounts per period. The totals of a group are the sum of its members' contributions, folded by a combiner (in a
backfill Beam lifts it before its grouping), so no step holds every profile and a stream's update costs what
changed, not all of history. A table's rows are computed from its groups' totals and the bounds of what was seen
(the earliest first_seen, the latest last_seen).

In a stream a customer's profile is emitted again as it grows: one keyed step remembers what the customer
contributed last, to every table in one state cell (a state read is a round trip to the runner, the stream's costliest
wait), and sends the difference, so the totals always hold each customer once; each firing folds only the
differences since the last, and one keyed step per group keeps its running totals. A key an earlier firing
produced may vanish from a later one (a late touch changes a customer's first-touch channel, and the cohort of the
old channel loses its only member): the step that computes the rows remembers the last ones and retracts
(schemas.contracts.RETRACTED) the keys that vanished, and sends only rows that changed.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Callable, Iterable

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.transforms import trigger, window
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from schemas.contracts import RETRACTED, contract

# The tables WholeTable computes. A restarted job's first firing does not know what the last run's landed: the
# commit step retracts the stored keys it no longer computes (transforms/warehouse.py).
WHOLE_TABLES = frozenset({"retention_cohorts", "social_impact", "social_impact_effects"})
BOUNDS = "__bounds__"  # the group whose totals carry the earliest first_seen and the latest last_seen
# How long a stream's gathering of the totals waits for the rest of one update once the first changed group comes.
GATHER_DELAY_S = 1

Sums = dict  # subkey → number (int or Decimal), or an array of them (a table's bootstrap replicates)


def add_sums(into: Sums, other: Sums, sign: int = 1) -> Sums:
    for subkey, value in other.items():
        into[subkey] = into.get(subkey, 0) + sign * value
    return into


def merged_contributions(contributions: Iterable[tuple]) -> dict:
    """(group, sums) pairs → {group: sums}, a group named twice summed once."""
    merged: dict = {}
    for group, sums in contributions:
        add_sums(merged.setdefault(group, {}), sums)
    return merged


class _Fold(beam.CombineFn):
    """(sums, earliest, latest) values → their sums, the earliest earliest and the latest latest."""

    def create_accumulator(self):
        return {}, None, None

    def add_input(self, accumulator, value):
        sums, earliest, latest = accumulator
        more, first, last = value
        add_sums(sums, more.weighed() if isinstance(more, Unweighed) else more)  # in place: a copy per input would cost the accumulator's size each time
        return sums, _earlier(earliest, first), _later(latest, last)

    def merge_accumulators(self, accumulators):
        sums, earliest, latest = {}, None, None
        for more, first, last in accumulators:
            add_sums(sums, more)
            earliest, latest = _earlier(earliest, first), _later(latest, last)
        return sums, earliest, latest

    def extract_output(self, accumulator):
        return accumulator


def _earlier(one, other):
    return other if one is None or (other is not None and other < one) else one


def _later(one, other):
    return other if one is None or (other is not None and other > one) else one


@dataclass(frozen=True)
class WholeTable:
    """A table over every customer: `contribute(profile)` gives its (group, sums) pairs, `rows(totals, earliest,
    latest)` the table from {group: sums} and the bounds of every profile seen (None, None before any).
    `weigh(customer id, sums)`, if given, turns what a customer adds to the totals (their contribution, or in a
    stream its difference from their last) into what is folded, e.g. each sum with its bootstrap replicates: the
    stream's state keeps the plain contribution, and the difference is taken on it."""
    table: str
    contribute: Callable
    rows: Callable
    weigh: Callable | None = None

    def __post_init__(self):
        if self.table not in WHOLE_TABLES:
            raise ValueError(f"{self.table} is computed whole: add it to WHOLE_TABLES")


def contributions(profile, tables: tuple[WholeTable, ...]) -> dict:
    """{(table, group): sums} of one profile to every table."""
    return {(table.table, group): sums for table in tables
            for group, sums in merged_contributions(table.contribute(profile)).items()}


@dataclass(frozen=True)
class Unweighed:
    """A customer's sums (or the difference of two of their contributions) on their way to a table's fold, which
    weighs them. A stream's fold is not lifted before its grouping: weighed at once, every changed customer's
    replicates (hundreds of times the plain sums) would cross the shuffle one by one; this way they exist only in
    the fold's accumulators."""
    customer_id: str
    sums: Sums
    weigh: Callable

    def weighed(self) -> Sums:
        return self.weigh(self.customer_id, self.sums)


def _weighed(table: WholeTable, customer_id: str, sums: Sums):
    return Unweighed(customer_id, sums, table.weigh) if table.weigh is not None else sums


def _stored(value) -> bytes:
    """A state cell's value as pickled bytes: Beam's state cache weighs every value a bundle writes, bytes at once,
    where it would walk a customer's contributions, or a whole table's groups and rows, at every write."""
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _loaded(cell):
    stored = cell.read()
    return None if stored is None else pickle.loads(stored)


def _once(profile, tables: tuple[WholeTable, ...]) -> list:
    """A profile emitted once (a backfill): its contributions (weighed) and bounds as they are."""
    by_name = {table.table: table for table in tables}
    return [*((table_group, (_weighed(by_name[table_group[0]], profile.customer_id, sums), None, None))
              for table_group, sums in contributions(profile, tables).items()),
            *(((table.table, BOUNDS), ({}, profile.first_seen, profile.last_seen)) for table in tables)]


class _ContributionDeltas(beam.DoFn):
    """(customer id, profile) → what changed in the customer's contributions to each table since their last, fuller
    profile: ((table, group), sums)."""
    LAST = ReadModifyWriteStateSpec("last", BytesCoder())  # (events, {(table, group): sums}) of the newest profile

    def __init__(self, tables: tuple[WholeTable, ...]):
        self.tables = tables
        self.by_name = {table.table: table for table in tables}

    def process(self, element, last=beam.DoFn.StateParam(LAST)):
        _, profile = element
        events, before = _loaded(last) or (-1, {})
        if profile.events <= events:
            return  # an older or the same profile: what it contributes is counted already
        now = contributions(profile, self.tables)
        last.write(_stored((profile.events, now)))
        for table_group in before.keys() | now.keys():
            delta = {k: v for k, v in add_sums(dict(now.get(table_group, {})), before.get(table_group, {}),
                                               -1).items() if v}
            if delta:
                yield table_group, (_weighed(self.by_name[table_group[0]], profile.customer_id, delta), None, None)
        for table in self.tables:
            yield (table.table, BOUNDS), ({}, profile.first_seen, profile.last_seen)


class _RunningTotals(beam.DoFn):
    """((table, group), what a firing changed in its totals) → (table, (group, version, the group's totals))."""
    TOTALS = ReadModifyWriteStateSpec("totals", BytesCoder())  # (version, (sums, earliest, latest))

    def process(self, element, totals=beam.DoFn.StateParam(TOTALS)):
        (table, group), change = element
        version, before = _loaded(totals) or (0, _Fold().create_accumulator())
        now = _Fold().merge_accumulators([before, change])
        totals.write(_stored((version + 1, now)))
        yield table, (group, version + 1, now)


def _split_bounds(folded: dict) -> tuple[dict, object, object]:
    sums = {group: totals[0] for group, totals in folded.items() if group != BOUNDS}
    _, earliest, latest = folded.get(BOUNDS, ({}, None, None))
    return sums, earliest, latest


class _GroupRowsOnce(beam.DoFn):
    """((table, group), the group's totals) → the group's rows, under the table's tag. A row depends on its own
    group's totals and the table's bounds only, so no step gathers a table's groups into one element (at ten million
    events one table's groups outgrow what a runner's sort buffer takes as one record)."""

    def __init__(self, tables: tuple[WholeTable, ...]):
        self.rows = {table.table: table.rows for table in tables}

    def process(self, element, bounds):
        (table, group), (sums, _, _) = element
        earliest, latest = bounds.get(table, (None, None))
        for row in self.rows[table]({group: sums}, earliest, latest):
            yield beam.pvalue.TaggedOutput(table, row)


class _UpdatedRows(beam.DoFn):
    """Each gathering of a table's groups that changed → the table's rows that changed, and retractions of vanished
    keys, under the table's tag."""
    LAST = ReadModifyWriteStateSpec("last", BytesCoder())  # ({group: (version, totals)}, {key: row})

    def __init__(self, tables: tuple[WholeTable, ...]):
        self.tables = {table.table: (contract(table.table).primary_key, table.rows) for table in tables}

    def process(self, element, last=beam.DoFn.StateParam(LAST)):
        table, changed = element
        key, rows = self.tables[table]
        groups, last_rows = _loaded(last) or ({}, {})
        for group, version, totals in changed:
            if group not in groups or version > groups[group][0]:  # a group's older totals arriving late lose
                groups[group] = (version, totals)
        current = {tuple(row[k] for k in key): row
                   for row in rows(*_split_bounds({g: totals for g, (_, totals) in groups.items()}))}
        last.write(_stored((groups, current)))
        for row_key, row in current.items():
            if last_rows.get(row_key) != row:
                yield beam.pvalue.TaggedOutput(table, row)
        for row_key in last_rows.keys() - current.keys():
            yield beam.pvalue.TaggedOutput(table, {**last_rows[row_key], RETRACTED: True})


class WholeTables(beam.PTransform):
    """CustomerProfile (one per customer, or re-emitted as it grows) → {table name: rows} of each WholeTable."""

    def __init__(self, *tables: WholeTable):
        super().__init__()
        self.tables = tables

    def expand(self, profiles):
        names = [table.table for table in self.tables]
        # A profile emitted again (an updating trigger) must replace what the customer contributed before.
        updating = profiles.windowing.triggerfn != trigger.DefaultTrigger()
        if not updating:
            folded = (profiles
                      | "Contribute" >> beam.FlatMap(_once, self.tables)
                      | "Fold" >> beam.CombinePerKey(_Fold()))
            bounds = (folded
                      | "Bounds" >> beam.Filter(lambda folded_group: folded_group[0][1] == BOUNDS)
                      | "ByTable" >> beam.MapTuple(lambda table_group, totals: (table_group[0], totals[1:])))
            outputs = (folded
                       | "Groups" >> beam.Filter(lambda folded_group: folded_group[0][1] != BOUNDS)
                       | "Rows" >> beam.ParDo(_GroupRowsOnce(self.tables), beam.pvalue.AsDict(bounds))
                       .with_outputs(*names))
            return {name: outputs[name] for name in names}
        # Each firing carries only what changed since the last (discarding): no grouping's state grows with firings.
        # It fires early where the profiles do (Prism 2.77 panics when an early firing falls due after a bounded
        # input ended).
        early = (trigger.AfterProcessingTime(GATHER_DELAY_S)
                 if getattr(profiles.windowing.triggerfn, "early", None) is not None else None)
        changes = lambda: beam.WindowInto(window.GlobalWindows(), trigger=trigger.AfterWatermark(early=early),
                                          accumulation_mode=trigger.AccumulationMode.DISCARDING)
        outputs = (profiles
                   | "ByCustomer" >> beam.Map(lambda profile: (profile.customer_id, profile))
                   | "Contribute" >> beam.ParDo(_ContributionDeltas(self.tables))
                   | "Changes" >> changes()
                   | "Fold" >> beam.CombinePerKey(_Fold())
                   | "Totals" >> beam.ParDo(_RunningTotals())
                   | "ChangedTotals" >> changes()
                   | "Gather" >> beam.GroupByKey()
                   | "Rows" >> beam.ParDo(_UpdatedRows(self.tables)).with_outputs(*names))
        return {name: outputs[name] for name in names}
