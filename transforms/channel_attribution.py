"""channel_attribution_daily: attributed conversions and revenue per order date, model, channel and currency.

order_attribution rows are corrected by re-emission (same key, higher revision), so summing them as they come
would count a corrected order twice. A stateful step keyed by the rows' order turns each new revision into
deltas (the old row taken back, the new one added); the daily totals are sums of deltas, correct whichever way
emissions are grouped or fired. Sums are exact decimals (float sums round differently in different orders), and
each delta counts the rows it adds or takes back: a daily key left with no row is retracted, not kept as zeros.
"""
from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.transforms import window
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.utils.windowed_value import WindowedValue

from schemas.contracts import RETRACTED
from transforms.currency import to_cents
from transforms.customer_profiles import updating_global_window, windowed_as
from transforms.keyed_replay import from_state, to_state

ROW_KEY = ("order_id", "model", "touch_index", "status")


def daily_key(row: dict) -> tuple:
    # the date as ISO text: grouping keys must encode deterministically, and dates do not
    return row["order_time"].date().isoformat(), row["model"], row["channel"], row["currency"]


def contribution(row: dict, rows: int = 1) -> tuple[Decimal, Decimal, int]:
    """(conversions, revenue, rows) the row adds: a reversal takes its credit back; rows=-1 takes the row away."""
    sign = 1 if row["status"] == "placed" else -1
    return Decimal(repr(sign * row["credit"])) * rows, Decimal(repr(row["revenue_credit"])) * rows, rows


def _total_row(key: tuple, sums) -> dict:
    date, model, channel, currency = key
    conversions, revenue, rows = sums
    return {"date": dt.date.fromisoformat(date), "model": model, "channel": channel, "currency": currency,
            "conversions": float(round(conversions, 9)), "revenue": to_cents(revenue),
            **({RETRACTED: True} if rows == 0 else {})}


@beam.typehints.with_output_types(beam.typehints.KV[str, beam.typehints.Any])
class _RevisionsByOrder(beam.DoFn):
    """order_attribution rows → per bundle, (order id, [(row key, its revision's _revision_delta)]) for each order
    whose rows it held: an order's rows (about twenty) come together, and cross to _Deltas as one small item."""

    def start_bundle(self):
        self.orders: dict = {}

    def process(self, row, timestamp=beam.DoFn.TimestampParam):
        revisions, earliest = self.orders.get(row["order_id"], ([], timestamp))
        revisions.append((row_key(row), _revision_delta(row)[:3]))
        self.orders[row["order_id"]] = revisions, min(earliest, timestamp)

    def finish_bundle(self):
        for order_id, (revisions, earliest) in self.orders.items():
            yield WindowedValue((order_id, revisions), earliest, [window.GlobalWindow()])


class _Deltas(beam.DoFn):
    """Keyed by an order: emits (daily key, (conversions, revenue, rows)) deltas as its rows' revisions supersede.
    One state value per order, {row key: its newest revision's _revision_delta}: each state value a stream reads
    for the first time is one round trip to the runner."""
    CURRENT = ReadModifyWriteStateSpec("current", BytesCoder())

    def process(self, element, current=beam.DoFn.StateParam(CURRENT)):
        _, revisions = element
        newest = from_state(current, current.read()) or {}
        deltas, changed = [], False
        for key, new in revisions:
            old = newest.get(key)
            if old is not None and old[0] >= new[0]:
                continue  # an older revision arriving late changes nothing
            newest[key], changed = new, True
            if new[2]:  # no rows for uncredited channels
                deltas.append((new[1], new[2]))
            if old is not None and old[2]:
                deltas.append((old[1], _taken_back(old[2])))
        if changed:
            current.write(to_state(current, newest))
        return deltas


def _taken_back(contribution: tuple[Decimal, Decimal, int]) -> tuple[Decimal, Decimal, int]:
    return tuple(-part for part in contribution)


def row_key(row: dict) -> tuple:
    return tuple(row[k] for k in ROW_KEY)


def _revision_delta(row: dict) -> tuple:
    """(revision, daily key, contribution or None when the row credits nothing, the daily keys it credits)."""
    key = daily_key(row)
    if not row["credit"]:
        return row["revision"], key, None, ()
    return row["revision"], key, contribution(row), (key,)


def _newer(one: tuple, other: tuple) -> tuple:
    """Two _revision_delta of one row key → the newest one's, with every daily key either credited."""
    newest = one if one[0] >= other[0] else other
    credited = one[3] if one[3] == other[3] else tuple(sorted({*one[3], *other[3]}))
    return (*newest[:3], credited)


class _NewestRevisions(beam.CombineFn):
    """An order's rows as (row key, _revision_delta) → {row key: _newer of all its revisions}. Keyed by the order,
    not the row: an order's rows (about thirty) come out of AttributeOrders together, so the bundle combines them
    into one accumulator and only that crosses the grouping, not a million rows."""

    def create_accumulator(self):
        return {}

    def add_input(self, newest, keyed_delta):
        key, delta = keyed_delta
        old = newest.get(key)
        newest[key] = delta if old is None else _newer(old, delta)
        return newest

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for accumulator in accumulators:
            for keyed_delta in accumulator.items():
                self.add_input(merged, keyed_delta)
        return merged

    def extract_output(self, newest):
        return newest


@beam.typehints.with_output_types(beam.typehints.KV[str, beam.typehints.Any])
class _NewestRevisionsInBundle(beam.DoFn):
    """order_attribution rows → (order id, its _NewestRevisions accumulator), combined in the bundle as a lifted
    combiner would, but holding at most `max_orders` orders: an order's rows come out of AttributeOrders together,
    so a small table combines nearly all of them, where Beam's lifted combine keeps up to 100,000 keys whatever
    their size (about 20 kB each here: most of a worker's memory at ten million events). An order flushed early
    meets its other accumulators after the grouping."""

    def __init__(self, max_orders: int = 2_000):
        self.max_orders = max_orders
        self.combine = _NewestRevisions()

    def start_bundle(self):
        self.orders: dict = {}  # order id → [accumulator, earliest timestamp], oldest first

    def process(self, row, timestamp=beam.DoFn.TimestampParam):
        entry = self.orders.get(row["order_id"])
        if entry is None:
            if len(self.orders) >= self.max_orders:
                yield from self._flush(self.max_orders // 2)
            entry = self.orders[row["order_id"]] = [self.combine.create_accumulator(), timestamp]
        self.combine.add_input(entry[0], (row_key(row), _revision_delta(row)))
        entry[1] = min(entry[1], timestamp)

    def finish_bundle(self):
        yield from self._flush(len(self.orders))

    def _flush(self, count: int):
        for order_id in list(itertools.islice(self.orders, count)):
            newest, earliest = self.orders.pop(order_id)
            yield WindowedValue((order_id, newest), earliest, [window.GlobalWindow()])


def _merged_deltas(order_id: str, accumulators) -> list[tuple]:
    return _newest_deltas(order_id, _NewestRevisions().merge_accumulators(accumulators))


NOTHING = (Decimal(0), Decimal(0), 0)


def _newest_deltas(_, newest: dict) -> list[tuple]:
    """(daily key, delta) for each row key of an order: its newest revision's contribution, and nothing to the
    days only older ones credited (so that a day left with no row is retracted, as _Deltas retracts it)."""
    deltas = []
    for _, key, contribution, credited in newest.values():
        if contribution:
            deltas.append((key, contribution))
        deltas.extend((other, NOTHING) for other in credited if not (contribution and other == key))
    return deltas


def _sum_deltas(deltas) -> tuple[Decimal, Decimal, int]:
    conversions, revenue, rows = Decimal(0), Decimal(0), 0
    for c, r, n in deltas:
        conversions, revenue, rows = conversions + c, revenue + r, rows + n
    return conversions, revenue, rows


class ChannelAttributionDaily(beam.PTransform):
    """order_attribution rows → channel_attribution_daily rows, re-emitted (upserts) as they change. `replay`: a
    bounded input, whose every revision is in before anything is summed: each row key's newest revision is combined
    before the grouping instead of kept in keyed state."""

    def __init__(self, update_every_s: int | None = 60, replay: bool = False):
        super().__init__()
        self.update_every_s = update_every_s
        self.replay = replay

    def expand(self, rows):
        rows = rows | "AllTime" >> windowed_as(rows, beam.WindowInto(window.GlobalWindows()))
        if self.replay:
            # With every revision in, a row key's deltas add up to what its newest revision adds, and nothing to
            # the days the older ones credited (which then keep a row only if another order credits them).
            # Combined in the bundles before the grouping, only each order's summary crosses it, never the rows.
            deltas = (rows
                      | "NewestInBundle" >> beam.ParDo(_NewestRevisionsInBundle())
                      | "ByOrder" >> beam.GroupByKey()
                      | "Deltas" >> beam.FlatMapTuple(_merged_deltas))
        else:
            deltas = (rows
                      | "ByOrder" >> beam.ParDo(_RevisionsByOrder())
                      | "Deltas" >> beam.ParDo(_Deltas()))
        return (deltas
                | "Updating" >> updating_global_window(deltas, self.update_every_s)
                | "Sum" >> beam.CombinePerKey(_sum_deltas)
                | "Row" >> beam.MapTuple(_total_row))
