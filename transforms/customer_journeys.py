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

Touches no order used form non-converting paths for the data-driven models, defined in event time so that a
backfill and a stream cut them alike: starting at a customer's earliest unused touch, a path takes every unused
touch within one lookback window of it; the next path starts at the next unused touch after that. A touch that
reaches the step after its path left (late data; or on Flink, a stitched touch overtaken by the watermark) cuts
the customer's paths again: the ones that changed leave again with a higher revision, and one that no longer
exists leaves as a retraction, so the data-driven fits end as a backfill's.
"""
from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from schemas.contracts import RETRACTED
from transforms.attribution import HEURISTIC_MODELS, AttributionConfig, Touch, heuristic_credits, prepare_path
from transforms.channel_grouping import ChannelRules, social_channel
from transforms.currency import ExchangeRates
from transforms.customer_profiles import BUNDLE_MEMO_ENTRIES
from transforms.event_time import from_micros, timestamp_of
from transforms.failed_events import (COORDINATES, FAILED, QuarantinedMap, failed_event, keyed_coordinates, keyed_key,
                                     quarantined, record_coordinates)
from transforms.keyed_replay import from_state, keyed_for, keyed_value, stateful_step, to_state

DATA_DRIVEN_MODELS = ("markov", "shapley")
CLICK_THROUGH = frozenset({"ad_click", "link_click"})
VIEW_THROUGH = frozenset({"impression", "video_view"})


@dataclass(frozen=True)
class JourneyConfig:
    attribution: AttributionConfig = AttributionConfig()
    allowed_lateness_s: float = 3600.0
    reversal_horizon_days: float = 120.0  # how long an attributed order waits for a cancellation or refund
    # How long a non-converting path and its data-driven window stay correctable by a touch that comes late, in
    # event time after they are complete. Long, because a flush (--flush-after-idle-s) moves a replayed history's
    # event time on by months in one step.
    correction_days: float = 400.0
    touch_interactions: frozenset = CLICK_THROUGH | VIEW_THROUGH  # which social interactions count as touches
    channels: ChannelRules = ChannelRules()
    rates: ExchangeRates = ExchangeRates()  # the data-driven models add up orders of different currencies

    @property
    def lookback(self) -> dt.timedelta:
        return dt.timedelta(days=self.attribution.lookback_days)

    @property
    def correction(self) -> dt.timedelta:
        return dt.timedelta(days=self.correction_days)


def _load(state) -> "_Journey":
    return from_state(state, state.read()) or _Journey()


def session_touch(session: dict, rules: ChannelRules) -> dict:
    """A session as a touch, with the record's Kafka coordinates (if any) for a step that fails on it."""
    traffic, channel = rules.session_channel(session)
    return {"touch_id": session["session_id"], "time": session["session_start"], "channel": channel,
            "kind": "session", "source": traffic.source, "medium": traffic.medium, "campaign": traffic.campaign,
            "platform": None, "view_through": False, COORDINATES: session.get(COORDINATES)}


def social_touch(interaction: dict) -> dict:
    return {"touch_id": interaction["event_id"], "time": interaction["event_time"],
            "channel": social_channel(interaction), "kind": "social", "source": interaction["platform"],
            "medium": "paid_social" if interaction["is_paid"] else "social",
            "campaign": interaction["campaign"] or "(not set)", "platform": interaction["platform"],
            "view_through": interaction["interaction_type"] in VIEW_THROUGH, COORDINATES: interaction.get(COORDINATES)}


# --- 1. identity stitching -----------------------------------------------------------------------------------------

class _Stitch(beam.DoFn):
    # A device's state: (customer id, time of the device's first link seen), or None, and the sessions waiting for
    # such a link. A session counts for the customer when a link came no later than its lookback + allowed lateness.
    # A session without such a link waits in state until that deadline passes, so links may arrive in any order (a
    # backfill's are unordered) and the answer is the same. One cell, not a link and a bag: most devices are new to
    # the worker, so each read is a round trip to the runner, and an element needed two.
    DEVICE = ReadModifyWriteStateSpec("device", BytesCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, config: JourneyConfig):
        self.config = config
        self.wait = config.lookback + dt.timedelta(seconds=config.allowed_lateness_s)

    @quarantined("Stitch", keyed_coordinates, keyed_key)
    def process(self, element, device=beam.DoFn.StateParam(DEVICE), expiry=beam.DoFn.TimerParam(EXPIRY)):
        anonymous_id, (kind, payload, *_) = element  # a link's third item: the coordinates of its event
        known, waiting = from_state(device, device.read()) or (None, [])
        stored = (known, waiting)
        # A logged-in session comes as its link, an anonymous one as its touch (_RouteSession); a whole session,
        # maybe with its customer, comes only from a savepoint of a job that sent every session here as it was.
        whole = kind == "session"
        new_link = (payload if kind == "link" else
                    (payload["customer_id"], payload["session_start"]) if whole and payload["customer_id"] else None)
        if new_link and (known is None or new_link[1] < known[1]):
            known = new_link
            # The sessions this link covers go to its customer; the others keep waiting for an earlier one.
            yield from ((known[0], touch) for touch in waiting if self._covers(known, touch))
            waiting = self._waiting(expiry, [touch for touch in waiting if not self._covers(known, touch)])
        if kind != "link":
            touch = session_touch(payload, self.config.channels) if whole else payload
            if whole and payload["customer_id"]:
                yield payload["customer_id"], touch
            elif known and self._covers(known, touch):
                yield known[0], touch
            else:
                waiting = self._waiting(expiry, waiting + [touch])
        if (known, waiting) != stored:
            device.write(to_state(device, (known, waiting)))

    def _covers(self, link: tuple[str, dt.datetime], touch: dict) -> bool:
        return link[1] <= touch["time"] + self.wait

    def _waiting(self, expiry, waiting: list) -> list:
        if waiting:
            expiry.set(timestamp_of(min(touch["time"] for touch in waiting) + self.wait))
        return waiting

    @on_timer(EXPIRY)
    @quarantined("Stitch", key=keyed_key)
    def expire(self, key=beam.DoFn.KeyParam, fired_at=beam.DoFn.TimestampParam,
               device=beam.DoFn.StateParam(DEVICE), expiry=beam.DoFn.TimerParam(EXPIRY)):
        # Never linked while any order could still have used them: an anonymous visitor's own journey.
        known, waiting = from_state(device, device.read()) or (None, [])
        settled = from_micros(fired_at.micros) - self.wait  # a session up to this time can no longer be linked
        yield from ((f"anon:{key}", touch) for touch in waiting if touch["time"] <= settled)
        left = self._waiting(expiry, [touch for touch in waiting if touch["time"] > settled])
        if len(left) != len(waiting):
            device.write(to_state(device, (known, left)))


class StitchIdentities(beam.PTransform):
    """(sessions, orders) → (customer or "anon:<id>", touch) for every session, as two PCollections: the logged-in
    sessions and those stitched by device (CustomerTouches flattens them with the social touches in one Flatten;
    FnApiRunner copies every element a Flatten passes, once per Flatten); and the events its steps failed on
    (transforms/failed_events.py). `replay`: a bounded input's devices are replayed in memory
    (transforms/keyed_replay.py) instead of through keyed state."""

    def __init__(self, config: JourneyConfig, replay: bool = False):
        super().__init__()
        self.config = config
        self.replay = replay

    def expand(self, inputs):
        sessions, orders = inputs
        routed = (sessions | "RouteSessions" >> beam.ParDo(_RouteSession(self.config.channels, self.replay))
                  .with_outputs(LOGGED_IN, FAILED, main="by_device"))
        links = (orders | "WithDevice" >> beam.Filter(lambda o: o["anonymous_id"] is not None)
                 | "LinksByDevice" >> keyed_for(lambda o: (o["anonymous_id"], (
                     "link", (o["customer_id"], o["event_time"]), o.get(COORDINATES))), self.replay))
        stitched = ((routed.by_device, links) | "Devices" >> beam.Flatten()
                    | "Stitch" >> stateful_step(_Stitch(self.config), self.replay, (FAILED,), STITCHED))
        failed = (routed[FAILED], stitched[FAILED]) | "Failed" >> beam.Flatten()
        return {LOGGED_IN: routed[LOGGED_IN], STITCHED: stitched[STITCHED], FAILED: failed}


LOGGED_IN, STITCHED = "logged_in", "stitched"


@beam.typehints.with_output_types(beam.typehints.KV[str, beam.typehints.Any])  # not inferred past TaggedOutput
class _RouteSession(beam.DoFn):
    """A logged-in session is its customer's touch as it comes (tagged LOGGED_IN), and its device step needs only
    the link it makes (all of a session crossing the device grouping was most of that step's cost); an anonymous
    session goes to its device's _Stitch as its touch. The device inputs are keyed as keyed_for(…, replay) keys
    them."""

    def __init__(self, rules: ChannelRules, replay: bool):
        self.rules = rules
        self.replay = replay

    def start_bundle(self):
        self.earliest_links: dict = {}

    @quarantined("RouteSessions", record_coordinates)
    def process(self, session, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        device, customer = session["anonymous_id"], session["customer_id"]
        coordinates = session.get(COORDINATES)
        if customer:
            # _Stitch keeps a device's earliest link: a link no earlier than one this bundle sent changes nothing
            # there, and most of a device's sessions are logged in.
            earliest = self.earliest_links.get((device, window))
            if earliest is None or session["session_start"] < earliest:
                if len(self.earliest_links) >= BUNDLE_MEMO_ENTRIES:
                    self.earliest_links.clear()
                self.earliest_links[device, window] = session["session_start"]
                yield keyed_value(device, ("link", (customer, session["session_start"]), coordinates), timestamp,
                                  self.replay)
            yield beam.pvalue.TaggedOutput(LOGGED_IN, (customer, session_touch(session, self.rules)))
        else:
            yield keyed_value(device, ("touch", session_touch(session, self.rules)), timestamp, self.replay)


# --- 2. attribution per customer ------------------------------------------------------------------------------------

PATHS = "paths"


@dataclass
class _Journey:
    """Everything one customer's attribution keeps between elements, stored as one state value."""
    touches: list = field(default_factory=list)
    used: set = field(default_factory=set)  # touch ids on some order's path: never a non-converting path
    pending: list = field(default_factory=list)  # placed orders waiting for their time + allowed lateness
    done: list = field(default_factory=list)  # attributed orders that may still be corrected or reversed
    reversals: list = field(default_factory=list)  # cancellations and refunds
    unused: list = field(default_factory=list)  # expired touches no order used, until their path is complete
    paths: list = field(default_factory=list)  # non-converting paths that left (their steps), while correctable
    emissions: int = 0  # non-converting paths and retractions sent: each one's revision
    settled: dt.datetime | None = None  # the latest cutoff a timer reached: event time up to it is complete

    def __setstate__(self, stored: dict) -> None:
        # State written before a field existed (a savepoint of an older job) gets its default.
        self.__dict__.update({**_Journey().__dict__, **stored})


class _Attribute(beam.DoFn):
    # One value, read and written once per element: the SDK's state cache sizes every value it is given, at a
    # fixed cost per value that dominated the stage when each list was a bag of its own.
    JOURNEY = ReadModifyWriteStateSpec("journey", BytesCoder())
    DUE = TimerSpec("due", TimeDomain.WATERMARK)

    def __init__(self, config: JourneyConfig):
        self.config = config
        self.lateness = dt.timedelta(seconds=config.allowed_lateness_s)
        self.lookback = config.lookback
        self.correction = config.correction
        self.horizon = max(config.lookback, dt.timedelta(days=config.reversal_horizon_days))

    @quarantined("Attribute", keyed_coordinates, keyed_key)
    def process(self, element, state=beam.DoFn.StateParam(JOURNEY), due=beam.DoFn.TimerParam(DUE)):
        customer_id, (kind, payload, *_) = element  # a touch's third item: the coordinates of its event
        journey = _load(state)
        if kind == "reversal":
            journey.reversals.append(payload)
            for order in (o for o in journey.done if o["order_id"] == payload["order_id"]):
                # already attributed: take its credit back now
                yield from self._rows(customer_id, order, order["touches"], journey.reversals)
        elif kind == "order":
            journey.pending.append(payload)
        else:
            journey.touches.append(payload)
            # A touch behind an order that was already attributed corrects that order's rows.
            for order in journey.done:
                if order["event_time"] - self.lookback <= payload["time"] <= order["event_time"]:
                    order["touches"].append(payload)
                    yield from self._attributed(customer_id, order, journey)
        self._save(state, due, journey)

    def _attributed(self, customer_id: str, order: dict, journey: _Journey):
        """The order's rows, and its converting path (by revision too: the data-driven fit keeps the latest)."""
        rows = list(self._rows(customer_id, order, order["touches"], journey.reversals))
        yield from rows
        steps = [r for r in rows if r["model"] == "linear" and r["status"] == "placed"]
        journey.used.update(r["touch_id"] for r in steps if r["touch_id"])
        yield beam.pvalue.TaggedOutput(PATHS, _path(customer_id, order, steps, self.config.rates))

    def _due(self, order_time: dt.datetime) -> Timestamp:
        return timestamp_of(order_time + self.lateness)

    def _save(self, state, due, journey: _Journey) -> None:
        """Store the journey and wake up at the next moment anything happens: an order falls due, or a touch,
        order or reversal expires. An empty journey leaves no state behind."""
        moments = []
        if journey.pending:
            moments.append(min(o["event_time"] for o in journey.pending))
        if journey.touches:
            moments.append(min(t["time"] for t in journey.touches) + self.lookback)
        if journey.done:
            moments.append(min(o["event_time"] for o in journey.done) + self.horizon)
        if journey.reversals:
            moments.append(min(r["event_time"] for r in journey.reversals) + self.horizon)
        if journey.unused:  # kept sorted
            moments.append(journey.unused[0]["time"] + 2 * self.lookback)
        if journey.paths:
            moments.append(journey.paths[0][0]["time"] + 2 * self.lookback + self.correction)
        if not moments:
            state.clear()
            return
        state.write(to_state(state, journey))
        due.set(self._due(min(moments)))

    @on_timer(DUE)
    @quarantined("Attribute", key=keyed_key)
    def fire(self, key=beam.DoFn.KeyParam, state=beam.DoFn.StateParam(JOURNEY), due=beam.DoFn.TimerParam(DUE),
             now=beam.DoFn.TimestampParam):
        cutoff = from_micros(now.micros) - self.lateness  # event time now settled
        journey = _load(state)
        ready = sorted((o for o in journey.pending if o["event_time"] <= cutoff), key=lambda o: o["event_time"])
        attributed = []
        for order in ready:
            # An attributed order keeps its own candidate touches: a correction or a reversal may come after
            # some of them have left the customer's state.
            order["touches"] = [t for t in journey.touches
                                if order["event_time"] - self.lookback <= t["time"] <= order["event_time"]]
            try:
                emitted = list(self._attributed(key, order, journey))
            except Exception as error:  # noqa: BLE001 - that order is quarantined, the customer's others go on
                yield beam.pvalue.TaggedOutput(FAILED, failed_event(
                    "Attribute", order.get(COORDINATES), key, {k: v for k, v in order.items() if k != "touches"},
                    error))
                continue
            attributed.append(order)
            yield from emitted
        # A touch no order can use any more leaves state; an unused one waits for its non-converting path.
        lookback = self.lookback
        expired = [t for t in journey.touches if t["time"] + lookback <= cutoff and t["touch_id"] not in journey.used]
        # A timer's own time may lag behind one that fired before (a late touch sets one in the past): the paths
        # are cut as of the latest cutoff reached, which the watermark has passed.
        settled = max(cutoff, journey.settled or cutoff)
        yield from self._cut_paths(key, journey, journey.unused + expired, settled)
        touches = [t for t in journey.touches if t["time"] + lookback > cutoff]
        journey = _Journey(
            touches=touches,
            used=journey.used & {t["touch_id"] for t in touches},
            pending=[o for o in journey.pending if o["event_time"] > cutoff],
            done=[o for o in journey.done + attributed if o["event_time"] + self.horizon > cutoff],
            reversals=[r for r in journey.reversals if r["event_time"] + self.horizon > cutoff],
            unused=journey.unused, paths=journey.paths, emissions=journey.emissions, settled=settled)
        self._save(state, due, journey)

    def _cut_paths(self, key: str, journey: _Journey, unused: list[dict], settled: dt.datetime):
        """Cut the unused touches and those of the paths that left into paths (non_converting_paths); send the
        complete ones that are new or changed, and a retraction for each path that left and is no longer one.
        Updates journey.unused (touches of incomplete paths) and journey.paths (the steps of complete paths while
        they can be corrected: until their start + 2 lookbacks + the correction time)."""
        lookback = self.lookback
        # Paths that end before the earliest touch to cut are cut alike whatever follows: only a late touch reopens
        # the ones it reaches, so on time nothing that left is cut again.
        earliest = min((t["time"] for t in unused), default=None)
        kept = [p for p in journey.paths if earliest is None or p[0]["time"] + lookback < earliest]
        sent = {p[0]["touch_id"]: p for p in journey.paths[len(kept):]}
        cut = non_converting_paths(unused + [t for p in sent.values() for t in p], lookback)
        # A path starting at t0 is complete once every touch up to t0 + lookback has expired: t0 + 2 lookbacks.
        complete = [p for p in cut if p[0]["time"] + 2 * lookback <= settled]
        journey.unused = [t for p in cut[len(complete):] for t in p]
        for path in complete:
            before = sent.pop(path[0]["touch_id"], None)
            if before is not None and [t["touch_id"] for t in before] == [t["touch_id"] for t in path]:
                continue
            journey.emissions += 2
            if before is not None:  # its time may be another window's: that window drops the old one
                yield beam.pvalue.TaggedOutput(PATHS, _retraction(key, before, journey.emissions - 1))
            yield beam.pvalue.TaggedOutput(PATHS, _non_converting(key, path, journey.emissions))
        for gone in sent.values():  # no longer a path's start
            journey.emissions += 1
            yield beam.pvalue.TaggedOutput(PATHS, _retraction(key, gone, journey.emissions))
        journey.paths = [[_step(t) for t in p] for p in kept + complete
                         if p[0]["time"] + 2 * lookback + self.correction > settled]

    def _rows(self, customer_id: str, order: dict, touches: list[dict], reversals: list[dict]):
        """The order's credit rows, and a negated copy for each cancellation or refund of it (same keys + status):
        every status in each emission, so that the order's rows land as one group and net out whatever order the
        emissions reach the warehouse in."""
        taken_back = {}
        own_reversals = [r for r in reversals if r["order_id"] == order["order_id"]]
        for reversal in own_reversals:
            taken_back[reversal["status"]] = taken_back.get(reversal["status"], 0) + reversal["amount"]
        statuses = [("placed", 1, order["amount"])]
        statuses += [(status, -1, amount) for status, amount in sorted(taken_back.items())]
        config = self.config.attribution
        by_id = {t["touch_id"]: t for t in touches}
        path = prepare_path([Touch(t["time"], t["channel"], t["touch_id"]) for t in by_id.values()],
                            order["event_time"], config)
        revision = emission_revision(by_id, own_reversals)
        group_rows = len(path) * len(HEURISTIC_MODELS) * len(statuses)
        for model in HEURISTIC_MODELS:
            for index, credit in enumerate(heuristic_credits(model, path, order["event_time"], config)):
                for status, sign, value in statuses:
                    yield {"order_id": order["order_id"], "model": model, "touch_index": index, "status": status,
                           "touch_id": path[index].touch_id, "customer_id": customer_id, "order_time": order["event_time"],
                           "touch_time": path[index].time, "channel": path[index].channel, "credit": credit,
                           "revenue_credit": sign * float(value) * credit, "currency": order["currency"],
                           "revision": revision, "group_rows": group_rows}


def non_converting_paths(touches: list[dict], lookback: dt.timedelta) -> list[list[dict]]:
    """Unused touches cut into paths: each starts at the earliest touch left and takes every touch within one
    lookback of it."""
    rest = sorted(touches, key=lambda t: (t["time"], t["touch_id"]))
    paths = []
    while rest:
        end = rest[0]["time"] + lookback
        path = [t for t in rest if t["time"] <= end]
        paths.append(path)
        rest = rest[len(path):]
    return paths


def _step(touch: dict) -> dict:
    """What attribution reads of a touch, and a non-converting path keeps while it can be corrected."""
    return {"touch_id": touch["touch_id"], "time": touch["time"], "channel": touch["channel"]}


ORDER_FACTS = ("order_id", "status", "event_time", "amount", "currency")


def _order_facts(order: dict) -> dict:
    """What attribution reads of an order, a cancellation or a refund, and where it came from: an order is
    attributed in a timer, long after its element, and a failure then is quarantined with its coordinates."""
    return {**{k: order[k] for k in ORDER_FACTS}, COORDINATES: order.get(COORDINATES)}


def _non_converting(customer_id: str, steps: list[dict], revision: int) -> dict:
    return {"customer_id": customer_id, "order_id": None, "converted": False, "time": steps[-1]["time"],
            "channels": [t["channel"] for t in steps], "touch_ids": [t["touch_id"] for t in steps],
            "revenue": 0.0, "revision": revision}


def _retraction(customer_id: str, steps: list[dict], revision: int) -> dict:
    """A path that left and is no longer one, at its old time: the window that counted it drops it."""
    return {**_non_converting(customer_id, steps, revision), "retracted": True}


def emission_revision(touches: dict, reversals: list[dict]) -> int:
    """The revision of an order's rows, from the facts they were computed from: its candidate touches by id, its
    cancellations and refunds."""
    return facts_revision(sorted(touches) + sorted((r["status"], str(r["amount"]), r["event_time"].isoformat())
                                                   for r in reversals))


def facts_revision(facts: list) -> int:
    """A revision from the facts behind an emission: their count in the high bits, so an emission that knows more
    is newer, and a checksum of them in the low 32, so two emissions from different facts never share a number —
    whichever job, runner or restart computed them, and in whatever order the facts arrived."""
    return len(facts) << 32 | zlib.crc32(repr(facts).encode())


def _path(customer_id: str, order: dict, rows: list[dict], rates: ExchangeRates) -> dict:
    """A converting path for the data-driven models, from the order's linear rows (one per path step)."""
    steps = sorted(rows, key=lambda r: r["touch_index"])
    return {"customer_id": customer_id, "order_id": order["order_id"], "revision": steps[0]["revision"],
            "converted": True, "time": order["event_time"],
            "channels": [r["channel"] for r in steps], "touch_ids": [r["touch_id"] for r in steps],
            "revenue": float(rates.convert(order["amount"], order["currency"]))}


class CustomerTouches(beam.PTransform):
    """(StitchIdentities' outputs, social interactions) → {"touches": (customer key, touch) for every touch: the
    sessions, and the social interactions of identified people whose type counts as a touch; FAILED: the events
    the steps failed on}."""

    def __init__(self, config: JourneyConfig = JourneyConfig()):
        super().__init__()
        self.config = config

    def expand(self, inputs):
        stitched, social = inputs
        touch_types = self.config.touch_interactions
        social_touches = (social
                          | "KnownPeople" >> beam.Filter(lambda s: s["customer_id"] and s["interaction_type"] in touch_types)
                          | "SocialTouch" >> beam.ParDo(QuarantinedMap(
                              "SocialTouch", lambda s: (s["customer_id"], social_touch(s)))).with_outputs(
                              FAILED, main="touches"))
        touches = ((stitched[LOGGED_IN], stitched[STITCHED], social_touches.touches)
                   | "AllTouches" >> beam.Flatten())
        failed = (stitched[FAILED], social_touches[FAILED]) | "Failed" >> beam.Flatten()
        return {"touches": touches, FAILED: failed}


class AttributeOrders(beam.PTransform):
    """(customer-keyed touches, orders) → {"order_attribution": rows (order × model × touch),
    "paths": converting paths (at attribution) and non-converting ones (when their touches expire unused),
    FAILED: the events attribution failed on}.

    A cancelled or refunded order keeps its placed rows and gains the same rows with that status and negative
    revenue credit, so sums over all statuses are net. Each emission of an order's rows is one group (all statuses
    and models, `group_rows` rows) with a `revision` derived from the facts behind it (emission_revision):
    downstream, the group of the highest revision is current, and it replaces the stored group whole. `replay`: as in
    StitchIdentities.
    """

    def __init__(self, config: JourneyConfig = JourneyConfig(), replay: bool = False):
        super().__init__()
        self.config = config
        self.replay = replay

    def expand(self, inputs):
        keyed_touches, orders = inputs
        # Only what attribution reads crosses the grouping and stays in state (an order's items do not).
        # Each element carries the coordinates of the event it came from, for a step that fails on it (an
        # order's facts keep them: it is attributed later, in a timer).
        placed = orders | "ByCustomer" >> keyed_for(lambda o: (o["customer_id"], (
            "order" if o["status"] == "placed" else "reversal", _order_facts(o))), self.replay)
        touches = keyed_touches | "AsTouch" >> keyed_for(
            lambda touch: (touch[0], ("touch", _step(touch[1]), touch[1].get(COORDINATES))), self.replay)
        outputs = ((touches, placed) | "Meet" >> beam.Flatten()
                   | "Attribute" >> stateful_step(_Attribute(self.config), self.replay, (PATHS, FAILED),
                                                  "order_attribution"))
        return {"order_attribution": outputs.order_attribution, PATHS: outputs[PATHS], FAILED: outputs[FAILED]}


class DataDrivenAttribution(beam.PTransform):
    """paths → data_driven_attribution rows: per event-time window of the paths' own times (order time, or a
    non-converting path's last touch), Markov removal effects and Shapley values fitted on that window's
    converting and non-converting paths, with the conversions and revenue each model credits to each channel
    (every converting path split by data_driven_credits).

    A path may come again, corrected (a higher revision) or retracted, from AttributeOrders: a window counts the
    latest of each. The models read a window's paths through their PathSummary, whose size is bounded by the
    channels: bounded input (a backfill) summarises the latest paths of each window where they are and merges the
    parts (a combiner that lifts), so no step holds a window's paths.

    Unbounded input fits a window when it is complete: its last non-converting path is known two lookbacks (plus
    the allowed lateness) after its end. Each path is stamped with that moment and grouped in a window shifted by
    it, so the watermark fires the fit then. A path that comes after that (corrected or retracted) fits the window
    again, with every path it had (late firings, accumulating), for the config's correction time after the window
    completed; the latest fit replaces the window's rows.
    """

    def __init__(self, window_days: float = 7.0, config: JourneyConfig = JourneyConfig()):
        super().__init__()
        self.window = dt.timedelta(days=window_days)
        self.config = config

    def expand(self, paths):
        if paths.is_bounded:
            return self._fit_all_at_once(paths)
        from apache_beam.transforms.trigger import AccumulationMode, AfterCount, AfterWatermark
        from apache_beam.transforms.window import FixedWindows

        settle = 2 * self.config.lookback + dt.timedelta(seconds=self.config.allowed_lateness_s)
        size = self.window.total_seconds()
        return (paths
                | "StampComplete" >> beam.Map(_stamp_complete, self.window, settle)
                | "Window" >> beam.WindowInto(FixedWindows(size, offset=settle.total_seconds() % size),
                                              trigger=AfterWatermark(late=AfterCount(1)),
                                              accumulation_mode=AccumulationMode.ACCUMULATING,
                                              allowed_lateness=Duration(
                                                  seconds=self.config.correction.total_seconds()))
                | "Gather" >> beam.GroupByKey()
                | "Fit" >> beam.FlatMap(_fit_window, self.window, self.config.attribution))

    def _fit_all_at_once(self, paths):
        """Every path is known before anything fires (one window over all input): each window's summary is
        combined from the latest version of each of its paths."""
        from apache_beam.transforms.window import GlobalWindows

        window, order = self.window, self.config.attribution.markov_order
        return (paths
                | "AllOfIt" >> beam.WindowInto(GlobalWindows())
                | "ByPath" >> beam.Map(lambda path: ((_window_start(path, window), _path_key(path)),
                                                     _compact(path)))
                | "LatestOfEach" >> beam.CombinePerKey(_latest_of)
                | "ByWindow" >> beam.FlatMapTuple(lambda key, path: [] if path[RETRACTED_AT] else [(key[0], path)])
                | "Summarise" >> beam.CombinePerKey(_Summarise(order))
                | "Fit" >> beam.FlatMap(_fit_summary, window, self.config.attribution))


def _window_start(path: dict, window: dt.timedelta) -> str:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (epoch + (path["time"] - epoch) // window * window).isoformat()  # aligned to the epoch, like FixedWindows


def _path_key(path: dict):
    """A path's identity across its versions: its order, or (non-converting) its customer and first touch."""
    return path["order_id"] or (path["customer_id"], path["touch_ids"][0])


def _identity(path: dict) -> int:
    return zlib.crc32(repr((path["order_id"], path["customer_id"], path["touch_ids"], path["channels"])).encode())


# A compact path: what a window's summary reads of it, behind its revision and whether it is a retraction.
REVISION_AT, RETRACTED_AT = 0, 1


def _compact(path: dict) -> tuple:
    return (path.get("revision", 0), bool(path.get("retracted")), tuple(path["channels"]), path["converted"],
            path["revenue"], _identity(path))


def _latest_of(versions) -> tuple:
    return max(versions, key=lambda version: version[REVISION_AT])


class _Summarise(beam.CombineFn):
    """Compact paths → their PathSummary."""

    def __init__(self, order: int):
        super().__init__()
        self.order = order

    def create_accumulator(self):
        from transforms.attribution import PathSummary
        return PathSummary(self.order)

    def add_input(self, summary, path):
        _, _, channels, converted, revenue, identity = path
        return summary.add(channels, converted, revenue, 1, identity)

    def merge_accumulators(self, summaries):
        summaries = iter(summaries)
        merged = next(summaries)
        for summary in summaries:
            merged.merge(summary)
        return merged

    def extract_output(self, summary):
        return summary


def _stamp_complete(path: dict, window: dt.timedelta, settle: dt.timedelta):
    start = dt.datetime.fromisoformat(_window_start(path, window))
    complete = timestamp_of(start + window + settle) - Duration(micros=1)
    return TimestampedValue((start.isoformat(), path), complete)


def _fit_window(element, window: dt.timedelta, config: AttributionConfig):
    start, paths = dt.datetime.fromisoformat(element[0]), element[1]
    # A corrected path comes again with a higher revision: the window counts the latest, unless that is its
    # retraction (the same reduction and summary as a bounded fit's LatestOfEach and Summarise).
    latest = {}
    for key, path in ((_path_key(path), _compact(path)) for path in paths):
        latest[key] = _latest_of((latest[key], path)) if key in latest else path
    summarise = _Summarise(config.markov_order)
    summary = summarise.create_accumulator()
    for path in latest.values():
        if not path[RETRACTED_AT]:
            summary = summarise.add_input(summary, path)
    if not summary.paths:
        # Every path of the window was retracted after a fit landed (a late touch joined them to an order): the
        # fit's rows go too. Its channels are among those of every path the window ever had.
        yield from _emptied_window(start, window, paths)
        return
    yield from _fitted(start, window, summary, config)


def _fit_summary(element, window: dt.timedelta, config: AttributionConfig):
    start, summary = element
    return _fitted(dt.datetime.fromisoformat(start), window, summary, config)


def _fitted(start: dt.datetime, window: dt.timedelta, summary, config: AttributionConfig):
    """A window's rows, from the summary of its paths."""
    from transforms.attribution import markov_removal_effects, shapley_values

    markov = markov_removal_effects(summary)
    fit = (config.shapley_exact_max_channels, config.shapley_samples, config.seed)
    shapley, shapley_by_value = shapley_values(summary, *fit), shapley_values(summary, *fit, by_value=True)
    # Conversions are credited by each model's values in conversions, order value by its values in value.
    models = {"markov": (markov.removal_effects, markov.shares(), {}, markov.value_removal_effects,
                         markov.value_shares()),
              "shapley": (shapley.values, shapley.shares(), shapley.standard_errors, shapley_by_value.values,
                          shapley_by_value.shares())}
    # The window's rows are one group: a refit on other paths replaces them whole (a channel may drop out).
    revision = summary.revision()
    group_rows = sum(len(values) for values, *_ in models.values())
    intervals = _intervals(summary, config)
    for model, (values, shares, errors, by_value, value_shares) in models.items():
        conversions, revenue = summary.credited(shares, value_shares)
        for channel in sorted(values):
            yield {"window_start": start, "window_end": start + window,
                   "model": model, "channel": channel, "value": values[channel], "share": shares[channel],
                   "standard_error": errors.get(channel, 0.0), "conversions": conversions[channel],
                   "revenue": round(revenue[channel], 2), "revenue_effect": by_value[channel],
                   "revenue_share": value_shares[channel], "paths": summary.paths, "revision": revision,
                   "group_rows": group_rows, **intervals(model, channel)}


INTERVAL_COLUMNS = ("share_ci_low", "share_ci_high", "revenue_share_ci_low", "revenue_share_ci_high", "resamples")


def _intervals(summary, config: AttributionConfig):
    """(model, channel) → the interval columns of its row: the bootstrap of the window's distinct paths
    (transforms/bootstrap.py), all None when config.bootstrap_resamples is 0."""
    distinct = summary.distinct_paths() if config.bootstrap_resamples else None
    if distinct is None:  # no bootstrap, or more distinct paths than a summary keeps (attribution.MAX_DISTINCT_PATHS)
        return lambda model, channel: dict.fromkeys(INTERVAL_COLUMNS)
    from transforms.bootstrap import bootstrap_shares

    found = bootstrap_shares(distinct, (summary.order,), True, config.bootstrap_resamples,
                             config.seed, config.confidence).models
    by_model = {"markov": found.get(f"markov_{summary.order}", {}), "shapley": found.get("shapley", {})}

    def columns(model: str, channel: str) -> dict:
        interval = by_model[model].get(channel)
        if interval is None:  # no path with the channel is left to resample (not in a fit of paths)
            return dict.fromkeys(INTERVAL_COLUMNS)
        return dict(zip(INTERVAL_COLUMNS, (interval.share.low, interval.share.high, interval.value_share.low,
                                           interval.value_share.high, config.bootstrap_resamples)))

    return columns


def _emptied_window(start: dt.datetime, window: dt.timedelta, paths: list[dict]):
    """Retractions of every row an earlier fit of the window may have landed: one group, by its own revision."""
    channels = sorted({channel for path in paths for channel in path["channels"]})
    revision = facts_revision([("retracted", p["order_id"], p["customer_id"], p["touch_ids"]) for p in paths])
    for model in DATA_DRIVEN_MODELS:
        for channel in channels:
            yield {"window_start": start, "window_end": start + window, "model": model, "channel": channel,
                   "value": 0.0, "share": 0.0, "standard_error": 0.0, "conversions": 0.0, "revenue": 0.0,
                   "revenue_effect": 0.0, "revenue_share": 0.0, "paths": 0, "revision": revision,
                   "group_rows": len(DATA_DRIVEN_MODELS) * len(channels), RETRACTED: True,
                   **dict.fromkeys(INTERVAL_COLUMNS)}
