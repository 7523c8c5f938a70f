"""The generator is deterministic, and the effects it plants can be recovered from its events alone."""
import datetime as dt
from collections import Counter, defaultdict

import pytest

from pipelines.generate import GeneratorConfig, PlantedTruth, generate, manifest, records_by_topic
from pipelines.generate.records import MALFORMED_KINDS
from transforms import codec
from transforms.event_rules import EventRules

KEY = b"test-key"


def test_same_seed_same_records_other_seed_other_records():
    config = GeneratorConfig(customers=150, days=20, seed=11)
    knobs = dict(fmt="mixed", late=0.05, out_of_order=0.1, malformed=0.05)
    first, again = generate(config, KEY, **knobs), generate(config, KEY, **knobs)
    assert [(r.topic, r.key, r.value, r.headers) for r in first] == [(r.topic, r.key, r.value, r.headers) for r in again]
    other = generate(GeneratorConfig(customers=150, days=20, seed=12), KEY, **knobs)
    assert [r.value for r in other] != [r.value for r in first]


def test_every_record_decodes_to_its_event_or_fails_with_its_kinds_reason():
    config = GeneratorConfig(customers=300, days=30, seed=5)
    records = generate(config, KEY, fmt="mixed", malformed=0.05)
    now = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    seen = Counter()
    for record in records:
        if record.event is not None:
            decoded = codec.decode(record.topic, record.value, record.headers)
            EventRules().check(record.topic, decoded, now)
            assert decoded == record.event
        else:
            with pytest.raises(codec.DecodeError) as caught:
                EventRules().check(record.topic, codec.decode(record.topic, record.value, record.headers), now)
            assert caught.value.reason in MALFORMED_KINDS[record.malformed]
            seen[record.malformed] += 1
    summary = manifest(config, records)
    assert set(seen) == set(MALFORMED_KINDS)  # every kind occurs
    assert sum(seen.values()) == round(0.05 * sum(summary["events_by_topic"].values()))
    assert summary["records"] == sum(summary["events_by_topic"].values()) + sum(seen.values())


def test_late_and_out_of_order_fractions_and_send_order():
    records = generate(GeneratorConfig(customers=300, days=30, seed=5), KEY, late=0.1, out_of_order=0.2)
    delays = [r.delay for r in records]
    late = sum(d >= dt.timedelta(hours=1) for d in delays) / len(records)
    disordered = sum(dt.timedelta(0) < d < dt.timedelta(hours=1) for d in delays) / len(records)
    assert 0.08 < late < 0.12 and 0.17 < disordered < 0.23
    sent_at = [r.event["event_time"] + r.delay for r in records]
    assert sent_at == sorted(sent_at)
    # A late record really arrives after records whose event time is later than its own.
    event_times = [r.event["event_time"] for r in records]
    assert any(event_times[i] > event_times[i + 1] for i in range(len(records) - 1))


def _channel(session):
    """The channel a visit came through, read off its utm tags and referrer as an analyst would."""
    medium, referrer = session["utm_medium"], session["referrer"] or ""
    if medium:
        return {"cpc": "paid_search", "email": "email", "display": "display", "paid_social": "paid_social",
                "social": "organic_social"}[medium]
    if not referrer:
        return "direct"
    if any(engine in referrer for engine in ("google", "bing", "duckduckgo", "ecosia")):
        return "organic_search"
    return "referral"


WORLD = GeneratorConfig(customers=6000, days=90, seed=21)


@pytest.fixture(scope="module")
def world():
    """A few thousand customers' events grouped by topic, with each customer's engagement read off the data."""
    return records_by_topic(WORLD, KEY)


def test_planted_conversion_rate_per_channel_is_recovered(world):
    truth = PlantedTruth()
    sessions_by_channel = Counter(_channel(s) for s in world["web_sessions"])
    channel_of_session = {s["session_id"]: _channel(s) for s in world["web_sessions"]}
    orders_by_channel = Counter(channel_of_session[o["session_id"]] for o in world["orders"]
                                if o["status"] == "placed" and o["session_id"])
    observed = {c: orders_by_channel[c] / sessions_by_channel[c] for c in truth.conversion_rate}
    for channel, planted in truth.conversion_rate.items():
        assert observed[channel] == pytest.approx(planted, rel=0.25), channel
    # The ranking the marketing team argues about is the planted one at its ends.
    ranked = sorted(observed, key=observed.get)
    assert ranked[0] == "display" and ranked[-1] == "email"


def _placed_by_customer(world):
    placed = defaultdict(list)
    for order in world["orders"]:
        if order["status"] == "placed":
            placed[order["customer_id"]].append(order)
    return placed


def _engaged_customers(world):
    # Engagement as the data shows it: organic interactions (not clicks on ads) by an identified customer.
    return {s["customer_id"] for s in world["social_interactions"]
            if s["customer_id"] and s["interaction_type"] not in ("impression", "ad_click", "link_click")}


def test_engaged_customers_retain_better_and_spend_more(world):
    placed, engaged = _placed_by_customer(world), _engaged_customers(world)
    repeat = {True: [], False: []}
    spend = {True: [], False: []}
    for customer, orders in placed.items():
        orders.sort(key=lambda o: o["event_time"])
        group = customer in engaged
        spend[group].extend(float(o["amount"]) for o in orders)
        if orders[0]["event_time"] > WORLD.end - dt.timedelta(days=60):
            continue  # too late in the history to see a 60-day repeat
        repeat[group].append(any(o["event_time"] - orders[0]["event_time"] <= dt.timedelta(days=60) for o in orders[1:]))
    repeat_rate = {g: sum(v) / len(v) for g, v in repeat.items()}
    assert repeat_rate[True] > 1.5 * repeat_rate[False], repeat_rate
    mean_spend = {g: sum(v) / len(v) for g, v in spend.items()}
    assert mean_spend[True] / mean_spend[False] == pytest.approx(PlantedTruth().engaged_spend_lift, rel=0.1)


def test_anonymous_sessions_later_log_in_and_stitch_to_one_customer(world):
    customers_of_device = defaultdict(set)
    for session in world["web_sessions"]:
        if session["customer_id"]:
            customers_of_device[session["anonymous_id"]].add(session["customer_id"])
    for order in world["orders"]:
        if order["anonymous_id"]:
            customers_of_device[order["anonymous_id"]].add(order["customer_id"])
    assert all(len(c) == 1 for c in customers_of_device.values())  # a device belongs to one customer
    first_login = {}
    for session in sorted(world["web_sessions"], key=lambda s: s["session_start"]):
        if session["customer_id"]:
            first_login.setdefault(session["anonymous_id"], session["session_start"])
    anonymous = [s for s in world["web_sessions"] if s["customer_id"] is None]
    stitched_later = [s for s in anonymous if s["anonymous_id"] in first_login
                      and first_login[s["anonymous_id"]] > s["session_start"]]
    assert len(stitched_later) > 0.1 * len(anonymous)
    guest_orders = [o for o in world["orders"] if o["session_id"] and o["anonymous_id"] not in first_login]
    assert guest_orders, "some devices are only ever identified through a guest checkout"
    assert any(o["session_id"] is None and o["anonymous_id"] is None for o in world["orders"]), "offline orders"


def test_personal_identifiers_are_pseudonymised(world):
    handles = {s["handle_pseudonym"] for s in world["social_interactions"] if s["handle_pseudonym"]}
    assert handles and all(h.startswith("ps_") and len(h) == 35 for h in handles)
    assert not any("@" in h or "user_" in h for h in handles)


def test_a_later_world_of_new_customers_shares_no_customer_with_the_history():
    history = GeneratorConfig(customers=40, days=20, seed=3)
    later = GeneratorConfig(customers=40, days=20, seed=3, start=history.end, first_customer=40)
    ids = [{r["customer_id"] for rs in records_by_topic(c, b"k").values() for r in rs if r.get("customer_id")}
           for c in (history, later)]
    assert ids[0] and ids[1] and not ids[0] & ids[1]
