"""One profile per identified customer: when they were first seen, their orders net of reversals, how they were
acquired, and when they engaged on social media. The `customers` table is its row; retention cohorts and social
impact are computed from all profiles.

Social engagement is what a customer does with the brand on social media of their own accord: organic
interactions other than impressions and link clicks (likes, comments, shares, mentions, follows, messages,
replies, video views). Ad clicks and impressions are marketing touches, not engagement.
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms import trigger, window

from transforms.currency import ExchangeRates, to_cents
from transforms.retention import CustomerHistory

NOT_ENGAGEMENT = frozenset({"impression", "ad_click", "link_click"})
ACQUISITION_MODELS = {"last_touch": "acquisition_channel", "first_touch": "first_touch_channel"}


def is_engagement(interaction: dict) -> bool:
    return (bool(interaction["customer_id"]) and not interaction["is_paid"]
            and interaction["interaction_type"] not in NOT_ENGAGEMENT)


@dataclass(frozen=True)
class PlacedOrder:
    order_id: str
    time: dt.datetime
    net: Decimal  # amount minus what cancellations and refunds took back


@dataclass(frozen=True)
class CustomerProfile:
    customer_id: str
    first_seen: dt.datetime
    last_seen: dt.datetime
    orders: tuple[PlacedOrder, ...]  # oldest first
    acquisition_channel: str | None
    first_touch_channel: str | None
    engagements: tuple[tuple[dt.datetime, str, str], ...]  # (time, platform, interaction type), oldest first
    devices: int
    events: int  # how many inputs the profile was built from: a later, fuller profile of the customer has more
    # when the site first knew them: their first session (logged in, or stitched by device) or order; None for
    # someone seen only on social media (social_impact compares only customers the site knows)
    first_site_seen: dt.datetime | None = None

    @property
    def first_order_time(self) -> dt.datetime | None:
        return self.orders[0].time if self.orders else None

    @property
    def social_engagement(self) -> str:
        if not self.engagements:
            return "none"
        if self.first_order_time is None:
            return "engaged_no_order"
        return "before_first_order" if self.engagements[0][0] <= self.first_order_time else "after_first_order"

    def row(self) -> dict:
        return {"customer_id": self.customer_id, "first_seen": self.first_seen,
                "first_order_time": self.first_order_time, "acquisition_channel": self.acquisition_channel,
                "first_touch_channel": self.first_touch_channel, "social_engagement": self.social_engagement,
                "orders": len(self.orders), "net_revenue": to_cents(sum((o.net for o in self.orders), Decimal(0))),
                "devices": self.devices}

    def history(self) -> CustomerHistory:
        return CustomerHistory(self.customer_id, tuple((o.time, o.net) for o in self.orders), {
            "acquisition_channel": self.acquisition_channel or "(none)",
            "first_touch_channel": self.first_touch_channel or "(none)",
            "social_engagement": self.social_engagement})


def build_profile(customer_id: str, touch_times: list[dt.datetime], orders: list[dict],
                  interactions: list[tuple], attribution: list[dict], devices: list[str],
                  rates: ExchangeRates = ExchangeRates(), session_times: list[dt.datetime] = ()
                  ) -> CustomerProfile | None:
    """The customer's profile from everything keyed to them (their touches' times, those of their sessions among
    them, interactions as interaction_fact gives them, acquisition rows as acquisition_row keeps them); None when
    nothing identifies a customer. Order values are in the reporting currency."""
    times = list(touch_times) + [o["event_time"] for o in orders] + [time for time, _ in interactions]
    if not times:
        return None
    placed = {o["order_id"]: o for o in orders if o["status"] == "placed"}
    taken_back = defaultdict(Decimal)
    for order in orders:
        if order["status"] != "placed":
            taken_back[order["order_id"]] += rates.convert(order["amount"], order["currency"])
    history = tuple(sorted((PlacedOrder(o["order_id"], o["event_time"],
                                        rates.convert(o["amount"], o["currency"]) - taken_back[o["order_id"]])
                            for o in placed.values()), key=lambda o: (o.time, o.order_id)))
    channels = _acquisition_channels(history[0].order_id, attribution) if history else {}
    engagements = tuple(sorted(engagement for _, engagement in interactions if engagement is not None))
    on_site = list(session_times) + [o["event_time"] for o in orders]
    return CustomerProfile(customer_id, min(times), max(times), history, channels.get("acquisition_channel"),
                           channels.get("first_touch_channel"), engagements, len(set(devices)),
                           len(touch_times) + len(orders) + len(interactions) + len(attribution),
                           min(on_site) if on_site else None)


def interaction_fact(interaction: dict) -> tuple[dt.datetime, tuple | None]:
    """What a profile needs of a social interaction: its time, and (time, platform, type) when it is engagement."""
    engagement = ((interaction["event_time"], interaction["platform"], interaction["interaction_type"])
                  if is_engagement(interaction) else None)
    return interaction["event_time"], engagement


def is_acquisition_row(row: dict) -> bool:
    """An order_attribution row that can name a customer's acquisition channels: placed, credited, by a model of
    ACQUISITION_MODELS."""
    return row["model"] in ACQUISITION_MODELS and row["status"] == "placed" and row["credit"] > 0


def acquisition_row(row: dict) -> dict:
    """What a profile keeps of an acquisition row."""
    return {k: row[k] for k in ("order_id", "model", "channel", "revision")}


def _acquisition_channels(first_order_id: str, attribution: list[dict]) -> dict:
    """The last-touch and first-touch channel of the first order, from its current (highest revision) rows."""
    rows = [r for r in attribution if r["order_id"] == first_order_id]
    latest = max((r["revision"] for r in rows), default=None)
    return {ACQUISITION_MODELS[r["model"]]: r["channel"] for r in rows if r["revision"] == latest}


def updating_global_window(pcoll, update_every_s: int | None) -> beam.PTransform:
    """All of history in one window. A stream re-emits it (accumulated) every `update_every_s` of processing time
    and the tables take each emission as an upsert; a backfill, or a stream with update_every_s None, emits once,
    at the end of its input. (Prism 2.77 panics when such an update falls due after a bounded input ended.)"""
    if update_every_s is None and pcoll.is_bounded:
        into = beam.WindowInto(window.GlobalWindows())  # the default trigger: once, and batch runners' fast path
    else:
        streaming = pcoll.pipeline.options.view_as(StandardOptions).streaming
        early = trigger.AfterProcessingTime(update_every_s) if streaming and update_every_s is not None else None
        # AfterWatermark spelled out even without early firings: Beam refuses the default trigger on an unbounded
        # input (a stream, or a backfill from Kafka), and it means the same: once, when all input is in.
        into = beam.WindowInto(window.GlobalWindows(), trigger=trigger.AfterWatermark(early=early),
                               accumulation_mode=trigger.AccumulationMode.ACCUMULATING)
    return windowed_as(pcoll, into)


def windowed_as(pcoll, into: beam.WindowInto) -> beam.PTransform:
    """`into`, or nothing where a batch pipeline's `pcoll` is windowed so already: Beam assigns windows element by
    element even when they do not change (a backfill's input is in the global window from its read on; 3 % of its
    time went there). A stream always windows again: that also starts its elements' panes afresh."""
    streaming = pcoll.pipeline.options.view_as(StandardOptions).streaming
    return _Unchanged() if not streaming and pcoll.windowing == into.windowing else into


class _Unchanged(beam.PTransform):
    def expand(self, pcoll):
        return pcoll


class CustomerProfiles(beam.PTransform):
    """{"touches": (customer key, touch), "orders", "social_interactions", "web_sessions", "order_attribution"}
    → CustomerProfile per identified customer (anonymous visitors' journeys have none)."""

    def __init__(self, update_every_s: int | None = 60, rates: ExchangeRates = ExchangeRates()):
        super().__init__()
        self.update_every_s = update_every_s
        self.rates = rates

    def expand(self, inputs):
        known = lambda customer_key: customer_key and not customer_key.startswith("anon:")
        # Only what a profile uses crosses the grouping: its encoding is most of a grouping's cost.
        keyed = {
            "touches": inputs["touches"] | "KnownTouches" >> beam.FlatMapTuple(
                lambda key, touch: [(key, (touch["time"], touch["kind"] == "session"))] if known(key) else []),
            "orders": inputs["orders"] | "OrdersByCustomer" >> beam.Map(lambda o: (o["customer_id"], o)),
            "interactions": inputs["social_interactions"] | "InteractionsByCustomer" >> beam.FlatMap(
                lambda i: [(i["customer_id"], interaction_fact(i))] if known(i["customer_id"]) else []),
            "attribution": inputs["order_attribution"] | "AcquisitionRows" >> beam.FlatMap(
                lambda r: [(r["customer_id"], acquisition_row(r))] if is_acquisition_row(r) else []),
            "devices": ((inputs["web_sessions"] | "SessionDevices" >> beam.ParDo(_NewDevices()),
                         inputs["orders"] | "OrderDevices" >> beam.ParDo(_NewDevices()))
                        | "AllDevices" >> beam.Flatten()),
        }
        windowed = {name: pcoll | f"Window{name}" >> updating_global_window(pcoll, self.update_every_s)
                    for name, pcoll in keyed.items()}
        return (windowed | "ByCustomer" >> beam.CoGroupByKey()
                | "Profile" >> beam.FlatMapTuple(_profile_of, self.rates))


def _profile_of(customer_id: str, grouped: dict, rates: ExchangeRates = ExchangeRates()) -> list[CustomerProfile]:
    touches = [_touch(t) for t in grouped["touches"]]
    profile = build_profile(customer_id, [time for time, _ in touches], list(grouped["orders"]),
                            [_interaction(i) for i in grouped["interactions"]],
                            [r for r in grouped["attribution"] if _acquisition(r)], list(grouped["devices"]), rates,
                            [time for time, session in touches if session])
    return [profile] if profile is not None else []


def _device_of(session_or_order: dict) -> list[tuple[str, str]]:
    """(customer, device) when a logged-in session or an order names both."""
    customer, device = session_or_order["customer_id"], session_or_order["anonymous_id"]
    return [(customer, device)] if customer and device else []


# What a bundle remembers only to send less holds at most this many entries: on Flink's batch mode a bundle is a
# whole partition, and a memo of every device in it would grow with history.
BUNDLE_MEMO_ENTRIES = 100_000


class _NewDevices(beam.DoFn):
    """_device_of each session or order, each pair once per bundle and window (while the bundle's memo holds it): a
    profile counts a customer's distinct devices, and the many sessions of one pair need not all cross the
    grouping."""

    def start_bundle(self):
        self.seen = set()

    def process(self, session_or_order, window=beam.DoFn.WindowParam):
        for pair in _device_of(session_or_order):
            if (pair, window) not in self.seen:
                if len(self.seen) >= BUNDLE_MEMO_ENTRIES:
                    self.seen.clear()
                self.seen.add((pair, window))
                yield pair


# A stream restored from a savepoint of a job that grouped whole touches, or their times alone, interactions and
# attribution rows may still hold some: they count as what is grouped now (a time alone as a session's).
def _touch(touch) -> tuple[dt.datetime, bool]:
    """(time, whether it is a session) of a grouped touch."""
    if isinstance(touch, dict):
        return touch["time"], touch.get("kind", "session") == "session"
    return touch if isinstance(touch, tuple) else (touch, True)


def _interaction(interaction) -> tuple:
    return interaction_fact(interaction) if isinstance(interaction, dict) else interaction


def _acquisition(row: dict) -> bool:
    return "status" not in row or is_acquisition_row(row)  # a kept acquisition_row has no status
