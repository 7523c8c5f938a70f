"""WholeTable: a table recomputed in full at every firing, landed as upserts plus retractions of vanished keys.

The all-of-history tables (retention_cohorts, social_impact) are computed from every customer's latest profile each
time the profiles update. A key an earlier firing produced may be absent from a later one — a late touch changes a
customer's first-touch channel, and the cohort of the old channel loses its only member. Upserts alone would leave
that row in the warehouse for ever, so the table would depend on how the events happened to arrive. One keyed step
remembers the rows of the last firing and retracts (schemas.contracts.RETRACTED) the keys that vanished.
"""
from __future__ import annotations

from typing import Callable, Iterable

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from schemas.contracts import RETRACTED, contract

# The tables WholeTable computes. A restarted job's first firing does not know what the last run's landed: the
# commit step retracts the stored keys it no longer computes (transforms/warehouse.py).
WHOLE_TABLES = frozenset({"retention_cohorts", "social_impact"})


class _ComputeFiring(beam.DoFn):
    def __init__(self, compute: Callable[[list], Iterable[dict]]):
        self.compute = compute

    def process(self, profiles, pane=beam.DoFn.PaneInfoParam):
        yield None, (pane.index, list(self.compute(profiles)))


class _RetractVanished(beam.DoFn):
    LAST = ReadModifyWriteStateSpec("last", PickleCoder())  # (pane index, {key: row}) of the newest firing

    def __init__(self, table: str):
        self.key = contract(table).primary_key

    def process(self, element, last=beam.DoFn.StateParam(LAST)):
        _, (pane, rows) = element
        last_pane, last_rows = last.read() or (-1, {})
        if pane <= last_pane:
            return  # an older firing arriving late: the newer one already stands
        current = {tuple(row[k] for k in self.key): row for row in rows}
        last.write((pane, current))
        yield from rows
        for key in last_rows.keys() - current.keys():
            yield {**last_rows[key], RETRACTED: True}


class WholeTable(beam.PTransform):
    """[every latest profile] → `compute(profiles)` rows of `table`, and retractions of keys no longer computed."""

    def __init__(self, table: str, compute: Callable[[list], Iterable[dict]]):
        super().__init__()
        if table not in WHOLE_TABLES:
            raise ValueError(f"{table} is computed whole: add it to WHOLE_TABLES")
        self.table = table
        self.compute = compute

    def expand(self, all_profiles):
        return (all_profiles
                | "Compute" >> beam.ParDo(_ComputeFiring(self.compute))
                | "RetractVanished" >> beam.ParDo(_RetractVanished(self.table)))
