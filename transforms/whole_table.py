"""WholeTable: a table over every customer (retention_cohorts, social_impact), kept as running totals.

Each customer's profile contributes sums to a few groups (a cohort and segment, a platform and group): counts and
amounts per period. The totals of a group are the sum of its members' contributions, folded by a combiner (in a
backfill Beam lifts it before its grouping), so no step holds every profile and a stream's update costs what
changed, not all of history. A table's rows are computed from its groups' totals and the bounds of what was seen
(the earliest first_seen, the latest last_seen).

In a stream a customer's profile is emitted again as it grows: one keyed step remembers what the customer
contributed last and sends the difference, so the totals always hold each customer once; each firing folds only the
differences since the last, and one keyed step per group keeps its running totals. A key an earlier firing
produced may vanish from a later one (a late touch changes a customer's first-touch channel, and the cohort of the
old channel loses its only member): the step that computes the rows remembers the last ones and retracts
(schemas.contracts.RETRACTED) the keys that vanished, and sends only rows that changed.
"""
from __future__ import annotations

from typing import Callable, Iterable

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms import trigger, window
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from schemas.contracts import RETRACTED, contract

# The tables WholeTable computes. A restarted job's first firing does not know what the last run's landed: the
# commit step retracts the stored keys it no longer computes (transforms/warehouse.py).
WHOLE_TABLES = frozenset({"retention_cohorts", "social_impact"})
BOUNDS = "__bounds__"  # the group whose totals carry the earliest first_seen and the latest last_seen
# How long a stream's gathering of the totals waits for the rest of one update once the first changed group comes.
GATHER_DELAY_S = 1

Sums = dict  # subkey → number (int or Decimal)


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
        add_sums(sums, more)  # in place: a copy per input would cost the accumulator's size each time
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


def _once(profile, contribute) -> list:
    """A profile emitted once (a backfill): its contributions and bounds as they are."""
    return [*((group, (sums, None, None)) for group, sums in merged_contributions(contribute(profile)).items()),
            (BOUNDS, ({}, profile.first_seen, profile.last_seen))]


class _ContributionDeltas(beam.DoFn):
    """(customer id, profile) → what changed in the customer's contributions since their last, fuller profile."""
    LAST = ReadModifyWriteStateSpec("last", PickleCoder())  # (events, {group: sums}) of the newest profile

    def __init__(self, contribute: Callable):
        self.contribute = contribute

    def process(self, element, last=beam.DoFn.StateParam(LAST)):
        _, profile = element
        events, before = last.read() or (-1, {})
        if profile.events <= events:
            return  # an older or the same profile: what it contributes is counted already
        now = merged_contributions(self.contribute(profile))
        last.write((profile.events, now))
        for group in before.keys() | now.keys():
            delta = {k: v for k, v in add_sums(dict(now.get(group, {})), before.get(group, {}), -1).items() if v}
            if delta:
                yield group, (delta, None, None)
        yield BOUNDS, ({}, profile.first_seen, profile.last_seen)


class _RunningTotals(beam.DoFn):
    """(group, what a firing changed in its totals) → (None, (group, version, the group's totals))."""
    TOTALS = ReadModifyWriteStateSpec("totals", PickleCoder())  # (version, (sums, earliest, latest))

    def process(self, element, totals=beam.DoFn.StateParam(TOTALS)):
        group, change = element
        version, before = totals.read() or (0, _Fold().create_accumulator())
        now = _Fold().merge_accumulators([before, change])
        totals.write((version + 1, now))
        yield None, (group, version + 1, now)


def _split_bounds(folded: dict) -> tuple[dict, object, object]:
    sums = {group: totals[0] for group, totals in folded.items() if group != BOUNDS}
    _, earliest, latest = folded.get(BOUNDS, ({}, None, None))
    return sums, earliest, latest


def _rows_once(_, folded, rows: Callable = None) -> list[dict]:
    return rows(*_split_bounds(dict(folded)))


class _UpdatedRows(beam.DoFn):
    """Each gathering of the groups that changed → the table's rows that changed, and retractions of vanished keys."""
    LAST = ReadModifyWriteStateSpec("last", PickleCoder())  # ({group: (version, totals)}, {key: row})

    def __init__(self, table: str, rows: Callable):
        self.key = contract(table).primary_key
        self.rows = rows

    def process(self, element, last=beam.DoFn.StateParam(LAST)):
        _, changed = element
        groups, last_rows = last.read() or ({}, {})
        for group, version, totals in changed:
            if group not in groups or version > groups[group][0]:  # a group's older totals arriving late lose
                groups[group] = (version, totals)
        current = {tuple(row[k] for k in self.key): row
                   for row in self.rows(*_split_bounds({g: totals for g, (_, totals) in groups.items()}))}
        last.write((groups, current))
        for key, row in current.items():
            if last_rows.get(key) != row:
                yield row
        for key in last_rows.keys() - current.keys():
            yield {**last_rows[key], RETRACTED: True}


class WholeTable(beam.PTransform):
    """CustomerProfile (one per customer, or re-emitted as it grows) → rows of `table`.

    `contribute(profile)` gives (group, sums) pairs; `rows(totals, earliest, latest)` the table from {group: sums}
    and the bounds of every profile seen (None, None before any)."""

    def __init__(self, table: str, contribute: Callable, rows: Callable):
        super().__init__()
        if table not in WHOLE_TABLES:
            raise ValueError(f"{table} is computed whole: add it to WHOLE_TABLES")
        self.table = table
        self.contribute = contribute
        self.rows = rows

    def expand(self, profiles):
        # A profile emitted again (an updating trigger) must replace what the customer contributed before.
        updating = profiles.windowing.triggerfn != trigger.DefaultTrigger()
        if not updating:
            return (profiles
                    | "Contribute" >> beam.FlatMap(_once, self.contribute)
                    | "Fold" >> beam.CombinePerKey(_Fold())
                    | "OneKey" >> beam.Map(lambda folded: (None, folded))
                    | "Gather" >> beam.GroupByKey()
                    | "Rows" >> beam.FlatMapTuple(_rows_once, self.rows))
        # Each firing carries only what changed since the last (discarding): no grouping's state grows with firings.
        # It fires early where the profiles do (Prism 2.77 panics when an early firing falls due after a bounded
        # input ended).
        early = (trigger.AfterProcessingTime(GATHER_DELAY_S)
                 if getattr(profiles.windowing.triggerfn, "early", None) is not None else None)
        changes = lambda: beam.WindowInto(window.GlobalWindows(), trigger=trigger.AfterWatermark(early=early),
                                          accumulation_mode=trigger.AccumulationMode.DISCARDING)
        return (profiles
                | "ByCustomer" >> beam.Map(lambda profile: (profile.customer_id, profile))
                | "Contribute" >> beam.ParDo(_ContributionDeltas(self.contribute))
                | "Changes" >> changes()
                | "Fold" >> beam.CombinePerKey(_Fold())
                | "Totals" >> beam.ParDo(_RunningTotals())
                | "ChangedTotals" >> changes()
                | "Gather" >> beam.GroupByKey()
                | "Rows" >> beam.ParDo(_UpdatedRows(self.table, self.rows)))
