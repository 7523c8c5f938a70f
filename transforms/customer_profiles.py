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


def build_profile(customer_id: str, touches: list[dict], orders: list[dict], interactions: list[dict],
                  attribution: list[dict], devices: list[str],
                  rates: ExchangeRates = ExchangeRates()) -> CustomerProfile | None:
    """The customer's profile from everything keyed to them; None when nothing identifies a customer. Order
    values are in the reporting currency."""
    times = ([t["time"] for t in touches] + [o["event_time"] for o in orders]
             + [i["event_time"] for i in interactions])
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
    engagements = tuple(sorted((i["event_time"], i["platform"], i["interaction_type"])
                               for i in interactions if is_engagement(i)))
    return CustomerProfile(customer_id, min(times), max(times), history, channels.get("acquisition_channel"),
                           channels.get("first_touch_channel"), engagements, len(set(devices)),
                           len(touches) + len(orders) + len(interactions) + len(attribution))


def _acquisition_channels(first_order_id: str, attribution: list[dict]) -> dict:
    """The last-touch and first-touch channel of the first order, from its current (highest revision) rows."""
    rows = [r for r in attribution if r["order_id"] == first_order_id and r["status"] == "placed" and r["credit"] > 0]
    latest = max((r["revision"] for r in rows), default=None)
    return {ACQUISITION_MODELS[r["model"]]: r["channel"] for r in rows
            if r["revision"] == latest and r["model"] in ACQUISITION_MODELS}


def latest_profiles(profiles) -> list[CustomerProfile]:
    """One profile per customer, the fullest: an updating stream re-emits a customer's profile as it grows."""
    latest: dict[str, CustomerProfile] = {}
    for profile in profiles:
        known = latest.get(profile.customer_id)
        if known is None or profile.events > known.events:
            latest[profile.customer_id] = profile
    return [latest[c] for c in sorted(latest)]


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
        keyed = {
            "touches": inputs["touches"] | "KnownTouches" >> beam.Filter(lambda kv: known(kv[0])),
            "orders": inputs["orders"] | "OrdersByCustomer" >> beam.Map(lambda o: (o["customer_id"], o)),
            "interactions": (inputs["social_interactions"] | "Identified" >> beam.Filter(lambda i: known(i["customer_id"]))
                             | "InteractionsByCustomer" >> beam.Map(lambda i: (i["customer_id"], i))),
            "attribution": (inputs["order_attribution"]
                            | "AcquisitionRows" >> beam.Filter(lambda r: r["model"] in ACQUISITION_MODELS)
                            | "RowsByCustomer" >> beam.Map(lambda r: (r["customer_id"], r))),
            "devices": ((inputs["web_sessions"] | "LoggedIn" >> beam.Filter(lambda s: s["customer_id"])
                         | "SessionDevice" >> beam.Map(lambda s: (s["customer_id"], s["anonymous_id"])),
                         inputs["orders"] | "Checkout" >> beam.Filter(lambda o: o["anonymous_id"])
                         | "OrderDevice" >> beam.Map(lambda o: (o["customer_id"], o["anonymous_id"])))
                        | "AllDevices" >> beam.Flatten()),
        }
        windowed = {name: pcoll | f"Window{name}" >> updating_global_window(pcoll, self.update_every_s)
                    for name, pcoll in keyed.items()}
        return (windowed | "ByCustomer" >> beam.CoGroupByKey()
                | "Profile" >> beam.FlatMapTuple(_profile_of, self.rates))


def _profile_of(customer_id: str, grouped: dict, rates: ExchangeRates = ExchangeRates()) -> list[CustomerProfile]:
    profile = build_profile(customer_id, list(grouped["touches"]), list(grouped["orders"]),
                            list(grouped["interactions"]), list(grouped["attribution"]), list(grouped["devices"]),
                            rates)
    return [profile] if profile is not None else []


class AllProfiles(beam.PTransform):
    """CustomerProfile → one list of the latest profile of every customer (for the cohort-wide tables)."""

    def expand(self, profiles):
        return (profiles | "OneKey" >> beam.Map(lambda p: (None, p))
                | "Gather" >> beam.GroupByKey()
                | "Latest" >> beam.MapTuple(lambda _, grouped: latest_profiles(grouped)))
