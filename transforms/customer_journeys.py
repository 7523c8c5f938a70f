"""Per-customer journeys in event time: identity stitching, then each order attributed once the watermark has
passed its time plus the allowed lateness, with every heuristic model side by side.

Two keyed, stateful steps:

1. `StitchIdentities` (keyed by anonymous id): a logged-in session or an order carrying the anonymous id links
   the device to its customer; sessions seen before that wait in state and are released to the customer when the
   link arrives. Sessions never linked within the lookback window leave as an anonymous visitor's journey
   (key "anon:<id>"): non-converting paths count for the data-driven models.
2. `AttributeOrders` (keyed by customer): touches and orders meet; an event-time timer fires at order time +
   allowed lateness and emits the order's path and its credits. A touch that arrives after that but still falls
   in an attributed order's lookback re-emits that order's rows with the same keys (a correction, upserted
   downstream). State is bounded by timers: touches and attributed orders are dropped once no order can use them.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.coders import PickleCoder, StrUtf8Coder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from transforms.attribution import HEURISTIC_MODELS, AttributionConfig, Touch, heuristic_credits, prepare_path
from transforms.channel_grouping import ChannelRules, social_channel

CLICK_THROUGH = frozenset({"ad_click", "link_click"})
VIEW_THROUGH = frozenset({"impression", "video_view"})


@dataclass(frozen=True)
class JourneyConfig:
    attribution: AttributionConfig = AttributionConfig()
    allowed_lateness_s: float = 3600.0
    reversal_horizon_days: float = 120.0  # how long an attributed order waits for a cancellation or refund
    touch_interactions: frozenset = CLICK_THROUGH | VIEW_THROUGH  # which social interactions count as touches
    channels: ChannelRules = ChannelRules()

    @property
    def lookback(self) -> dt.timedelta:
        return dt.timedelta(days=self.attribution.lookback_days)


def _ts(when: dt.datetime) -> Timestamp:
    return Timestamp.from_utc_datetime(when)


def session_touch(session: dict, rules: ChannelRules) -> dict:
    traffic, channel = rules.session_channel(session)
    return {"touch_id": session["session_id"], "time": session["session_start"], "channel": channel,
            "kind": "session", "source": traffic.source, "medium": traffic.medium, "campaign": traffic.campaign,
            "platform": None, "view_through": False}


def social_touch(interaction: dict) -> dict:
    return {"touch_id": interaction["event_id"], "time": interaction["event_time"],
            "channel": social_channel(interaction), "kind": "social", "source": interaction["platform"],
            "medium": "paid_social" if interaction["is_paid"] else "social",
            "campaign": interaction["campaign"] or "(not set)", "platform": interaction["platform"],
            "view_through": interaction["interaction_type"] in VIEW_THROUGH}


# --- 1. identity stitching -----------------------------------------------------------------------------------------

class _Stitch(beam.DoFn):
    CUSTOMER = ReadModifyWriteStateSpec("customer", StrUtf8Coder())
    PENDING = BagStateSpec("pending", PickleCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, config: JourneyConfig):
        self.config = config

    def process(self, element, customer=beam.DoFn.StateParam(CUSTOMER), pending=beam.DoFn.StateParam(PENDING),
                expiry=beam.DoFn.TimerParam(EXPIRY)):
        anonymous_id, (kind, payload) = element
        known = customer.read()
        owner = payload if kind == "link" else (payload["customer_id"] or known)
        if known is None and (kind == "link" or payload["customer_id"]):
            # The device is linked now: the sessions that waited for it go to its customer.
            customer.write(owner)
            yield from ((owner, waiting) for waiting in pending.read())
            pending.clear()
        if kind == "link":
            return
        touch = session_touch(payload, self.config.channels)
        if owner:
            yield owner, touch
        else:
            pending.add(touch)
            expiry.set(_ts(touch["time"] + self.config.lookback) + self.config.allowed_lateness_s)

    @on_timer(EXPIRY)
    def expire(self, key=beam.DoFn.KeyParam, pending=beam.DoFn.StateParam(PENDING)):
        # Never linked while any order could still have used them: an anonymous visitor's own journey.
        yield from ((f"anon:{key}", touch) for touch in pending.read())
        pending.clear()


class StitchIdentities(beam.PTransform):
    """(sessions, orders) → (customer or "anon:<id>", touch) for every session."""

    def __init__(self, config: JourneyConfig):
        super().__init__()
        self.config = config

    def expand(self, inputs):
        sessions, orders = inputs
        by_device = sessions | "SessionsByDevice" >> beam.Map(lambda s: (s["anonymous_id"], ("session", s)))
        links = (orders | "WithDevice" >> beam.Filter(lambda o: o["anonymous_id"] is not None)
                 | "LinksByDevice" >> beam.Map(lambda o: (o["anonymous_id"], ("link", o["customer_id"]))))
        return ((by_device, links) | "Devices" >> beam.Flatten()
                | "Stitch" >> beam.ParDo(_Stitch(self.config)))


# --- 2. attribution per customer ------------------------------------------------------------------------------------

class _Attribute(beam.DoFn):
    TOUCHES = BagStateSpec("touches", PickleCoder())
    PENDING = BagStateSpec("pending_orders", PickleCoder())
    DONE = BagStateSpec("attributed_orders", PickleCoder())
    REVERSALS = BagStateSpec("reversals", PickleCoder())
    DUE = TimerSpec("due", TimeDomain.WATERMARK)

    def __init__(self, config: JourneyConfig):
        self.config = config

    def process(self, element, touches=beam.DoFn.StateParam(TOUCHES), pending=beam.DoFn.StateParam(PENDING),
                done=beam.DoFn.StateParam(DONE), reversals=beam.DoFn.StateParam(REVERSALS),
                due=beam.DoFn.TimerParam(DUE)):
        customer_id, (kind, payload) = element
        if kind == "reversal":
            reversals.add(payload)
            attributed = [o for o in done.read() if o["order_id"] == payload["order_id"]]
            for order in attributed:  # already attributed: take its credit back now
                yield from self._rows(customer_id, order, list(touches.read()), [payload], placed=False)
            return
        if kind == "order":
            pending.add(payload)
            due.set(self._due(min(o["event_time"] for o in pending.read())))
            return
        touches.add(payload)
        due.set(self._due(min((o["event_time"] for o in pending.read()), default=payload["time"])))
        # A touch behind an order that was already attributed corrects that order's rows.
        for order in done.read():
            if order["event_time"] - self.config.lookback <= payload["time"] <= order["event_time"]:
                yield from self._rows(customer_id, order, list(touches.read()), list(reversals.read()))

    def _due(self, order_time: dt.datetime) -> Timestamp:
        return _ts(order_time) + self.config.allowed_lateness_s

    @on_timer(DUE)
    def fire(self, key=beam.DoFn.KeyParam, touches=beam.DoFn.StateParam(TOUCHES),
             pending=beam.DoFn.StateParam(PENDING), done=beam.DoFn.StateParam(DONE),
             reversals=beam.DoFn.StateParam(REVERSALS), due=beam.DoFn.TimerParam(DUE),
             now=beam.DoFn.TimestampParam):
        all_touches = list(touches.read())
        waiting, ready = [], []
        for order in pending.read():
            (ready if self._due(order["event_time"]) <= now else waiting).append(order)
        all_reversals = list(reversals.read())
        for order in sorted(ready, key=lambda o: o["event_time"]):
            yield from self._rows(key, order, all_touches, all_reversals)
        pending.clear()
        for order in waiting:
            pending.add(order)
        horizon_s = max(self.config.lookback.total_seconds(), self.config.reversal_horizon_days * 86400)
        finished = [o for o in list(done.read()) + ready  # may still be corrected or reversed
                    if self._due(o["event_time"]) + horizon_s > now]
        done.clear()
        for order in finished:
            done.add(order)
        kept_reversals = [r for r in all_reversals if _ts(r["event_time"]) + horizon_s > now]
        reversals.clear()
        for reversal in kept_reversals:
            reversals.add(reversal)
        # Keep only touches some order may still use: within the lookback of a waiting order or of the future.
        horizon = now.to_utc_datetime().replace(tzinfo=dt.timezone.utc) - self.config.lookback - dt.timedelta(
            seconds=self.config.allowed_lateness_s)
        keep = [t for t in all_touches if t["time"] >= horizon or any(
            o["event_time"] - self.config.lookback <= t["time"] for o in waiting + finished)]
        touches.clear()
        for touch in keep:
            touches.add(touch)
        if waiting:
            due.set(self._due(min(o["event_time"] for o in waiting)))

    def _rows(self, customer_id: str, order: dict, touches: list[dict], reversals: list[dict], placed: bool = True):
        """The order's credit rows, and a negated copy for each cancellation or refund of it (same keys + status)."""
        statuses = [("placed", 1)] if placed else []
        statuses += sorted({(r["status"], -1) for r in reversals if r["order_id"] == order["order_id"]})
        config = self.config.attribution
        by_id = {t["touch_id"]: t for t in touches}
        path = prepare_path([Touch(t["time"], t["channel"]) for t in by_id.values()], order["event_time"], config)
        ids = _touch_ids(path, by_id.values())
        value = order["amount"]
        for model in HEURISTIC_MODELS:
            for index, credit in enumerate(heuristic_credits(model, path, order["event_time"], config)):
                for status, sign in statuses:
                    yield {"order_id": order["order_id"], "model": model, "touch_index": index, "status": status,
                           "touch_id": ids[index], "customer_id": customer_id, "order_time": order["event_time"],
                           "touch_time": path[index].time, "channel": path[index].channel, "credit": credit,
                           "revenue_credit": sign * float(value) * credit, "currency": order["currency"]}


def _touch_ids(path: list[Touch], touches) -> list[str | None]:
    """The touch id behind each path step (None for the synthetic no-touch step)."""
    lookup = {(t["time"], t["channel"]): t["touch_id"] for t in touches}
    return [lookup.get((step.time, step.channel)) for step in path]


class AttributeOrders(beam.PTransform):
    """(customer-keyed touches, social interactions, orders) → order_attribution rows (order × model × touch).

    A cancelled or refunded order keeps its placed rows and gains the same rows with that status and negative
    revenue credit, so sums over all statuses are net.
    """

    def __init__(self, config: JourneyConfig = JourneyConfig()):
        super().__init__()
        self.config = config

    def expand(self, inputs):
        keyed_sessions, social, orders = inputs
        touch_types = self.config.touch_interactions
        social_touches = (social
                          | "KnownPeople" >> beam.Filter(lambda s: s["customer_id"] and s["interaction_type"] in touch_types)
                          | "SocialTouch" >> beam.Map(lambda s: (s["customer_id"], social_touch(s))))
        placed = orders | "ByCustomer" >> beam.Map(
            lambda o: (o["customer_id"], ("order" if o["status"] == "placed" else "reversal", o)))
        touches = ((keyed_sessions, social_touches) | "AllTouches" >> beam.Flatten()
                   | "AsTouch" >> beam.MapTuple(lambda customer, touch: (customer, ("touch", touch))))
        return ((touches, placed) | "Meet" >> beam.Flatten()
                | "Attribute" >> beam.ParDo(_Attribute(self.config)))
