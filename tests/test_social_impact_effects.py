"""social_impact_effects: every metric by hand on a few customers, the seeded bootstrap, a stream's re-emitted profiles
counted once, and the intervals' coverage of the generator's planted effects over many seeded worlds."""
import datetime as dt
from collections import defaultdict
from decimal import Decimal

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import trigger, window

from pipelines.generate import GeneratorConfig, PlantedTruth, records_by_topic
from transforms.customer_profiles import CustomerProfile, PlacedOrder, build_profile, interaction_fact
from transforms.social_impact_effects import (METRICS, SocialImpactEffects, effects_contributions, replicate_weights,
                                              social_impact_effects, social_impact_effects_table, weighed)
from transforms.whole_table import Unweighed, _ContributionDeltas, merged_contributions

T0 = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)  # a Monday: first orders' weeks start here
DAY = dt.timedelta(days=1)


def _profile(customer_id, orders=(), engagements=(), on_site=True, last_seen_day=200):
    """A profile from (day, net) orders and (day, platform) engagements; last_seen sets the latest event."""
    placed = tuple(PlacedOrder(f"{customer_id}-{n}", T0 + day * DAY, Decimal(net))
                   for n, (day, net) in enumerate(orders))
    engaged = tuple((T0 + day * DAY, platform, "like") for day, platform in engagements)
    return CustomerProfile(customer_id, T0, T0 + last_seen_day * DAY, placed, None, None, engaged, 1,
                           1 + len(placed) + len(engaged), T0 if on_site else None)


CUSTOMERS = [
    # engaged on instagram before buying: 100 on day 1, 50 on day 10 (a repeat within 30 days)
    _profile("A", orders=[(1, "100.00"), (10, "50.00")], engagements=[(0, "instagram")]),
    # followed on x only after buying: not engaged. 80 on day 2, 20 on day 40 (in the second 30 days)
    _profile("B", orders=[(2, "80.00"), (40, "20.00")], engagements=[(5, "x")]),
    _profile("C"),  # known to the site, never engaged, never bought
    _profile("D", engagements=[(3, "instagram")], on_site=False),  # reach only: in neither population
    _profile("E", engagements=[(4, "facebook")]),  # engaged, never bought
]


def _by_key(rows):
    return {(row["platform"], row["metric"]): row for row in rows}


def test_every_metric_by_hand():
    rows = _by_key(social_impact_effects(CUSTOMERS, resamples=50, seed=1))
    assert {platform for platform, _ in rows} == {"all", "instagram", "facebook"}, "x: nobody engaged before buying"
    expected = {  # metric: (engaged, not_engaged, lift, engaged_n, not_engaged_n) on platform 'all'
        "conversion": (0.5, 0.5, 0.0, 2, 2),  # A and E against B and C
        "order_value": (75.0, 50.0, 0.5, 2, 2),  # 150 over 2 orders against 100 over 2: a ratio
        "ltv": (75.0, 50.0, 0.5, 2, 2),  # 150 over A and E against 100 over B and C
        "repeat_rate_90d": (1.0, 1.0, 0.0, 1, 1),
        "retention_30d": (1.0, 0.0, 1.0, 1, 1),  # A's day 10; B's next order is on day 40
        "retention_60d": (0.0, 1.0, -1.0, 1, 1),
        "retention_90d": (0.0, 0.0, 0.0, 1, 1),
    }
    for metric, (engaged, not_engaged, lift, engaged_n, not_engaged_n) in expected.items():
        row = rows[("all", metric)]
        assert (row["engaged"], row["not_engaged"], row["engaged_n"], row["not_engaged_n"]) == pytest.approx(
            (engaged, not_engaged, engaged_n, not_engaged_n)), metric
        assert row["lift"] == pytest.approx(lift), metric
        assert row["lift_kind"] == METRICS[metric][0]
        assert (row["engaged_customers"], row["not_engaged_customers"]) == (2, 2)
        assert (row["resamples"], row["seed"], row["confidence"]) == (50, 1, 0.95)
        assert row["as_of"] == T0 + 200 * DAY
    instagram, facebook = rows[("instagram", "ltv")], rows[("facebook", "ltv")]
    assert (instagram["engaged"], instagram["lift"], instagram["engaged_customers"]) == (150.0, 2.0, 1)
    assert (facebook["engaged"], facebook["lift"]) == (0.0, -1.0)
    no_orders = rows[("facebook", "order_value")]
    assert (no_orders["engaged"], no_orders["lift"], no_orders["engaged_n"], no_orders["lift_ci_low"]) == (
        None, None, 0, None)


def test_a_first_order_counts_once_its_week_is_old_enough():
    """A's first order (day 1) is in the week ending on day 7: 45 days after that, its 30-day retention is known,
    not its 60- or 90-day retention."""
    a = _profile("A", orders=[(1, "100.00"), (10, "50.00")], engagements=[(0, "instagram")], last_seen_day=52)
    rows = _by_key(social_impact_effects([a, _profile("B", orders=[(2, "80.00")], last_seen_day=52)]))
    assert rows[("all", "retention_30d")]["engaged_n"] == 1
    assert rows[("all", "retention_30d")]["not_engaged_n"] == 1
    assert rows[("all", "retention_60d")]["engaged_n"] == 0
    assert rows[("all", "retention_60d")]["engaged"] is None
    assert rows[("all", "repeat_rate_90d")]["lift"] is None


def test_the_intervals_hold_the_point_and_are_none_without_resamples():
    rows = social_impact_effects(CUSTOMERS, resamples=200, seed=3)
    for row in rows:
        if row["lift_ci_low"] is not None:
            assert row["lift_ci_low"] <= row["lift_ci_high"]
    assert all(row["lift_ci_low"] is None and row["engaged_ci_high"] is None
               for row in social_impact_effects(CUSTOMERS, resamples=0))


def test_the_bootstrap_weights_are_seeded_per_customer():
    """The same customer and seed: the same weights, in any process (a stable hash, not Python's salted hash()),
    whatever else is computed; another seed or customer: others. Poisson(1): mean and variance 1."""
    weights = replicate_weights("C0000042", 2000, seed=7)
    assert weights[0] == 1 and len(weights) == 2001
    assert np.array_equal(weights, replicate_weights("C0000042", 2000, seed=7))
    assert not np.array_equal(weights, replicate_weights("C0000042", 2000, seed=8))
    assert not np.array_equal(weights, replicate_weights("C0000043", 2000, seed=7))
    assert weights[1:].mean() == pytest.approx(1, abs=0.1) and weights[1:].var() == pytest.approx(1, abs=0.15)
    # a known draw, so that a change of generator or hash (which would move every landed interval) is seen
    assert replicate_weights("C0000042", 8, seed=7).tolist() == KNOWN_DRAW


KNOWN_DRAW = [1, 1, 1, 0, 0, 0, 0, 1, 0]  # numpy's default generator (PCG64) seeded [7, blake2b-64 of the id]


def test_the_table_is_deterministic_for_a_seed_and_its_intervals_differ_across_seeds():
    profiles = _world_profiles(GeneratorConfig(customers=200, days=120, seed=5))
    one, again, other = (social_impact_effects(profiles, seed=seed) for seed in (1, 1, 2))
    assert one == again
    pairs = list(zip(_by_key(one).values(), _by_key(other).values()))
    assert all(a["lift"] == b["lift"] for a, b in pairs), "the point estimates do not depend on the seed"
    assert any(a["lift_ci_low"] != b["lift_ci_low"] for a, b in pairs)


def _updating(profiles):
    return profiles | beam.WindowInto(window.GlobalWindows(), trigger=trigger.AfterWatermark(),
                                      accumulation_mode=trigger.AccumulationMode.ACCUMULATING)


def test_a_re_emitted_profile_counts_once_in_the_stream_and_in_a_backfill():
    """A stream emits A early (one order, no engagement yet: not engaged), then whole (an engagement before that
    order came late: A moves to the engaged, with a second order), and the early one again, late: the rows equal
    those of each profile once, replicates included (the difference is weighed after it is taken, in integer
    cents: exact)."""
    early = _profile("A", orders=[(1, "100.00")], last_seen_day=20)
    full = CUSTOMERS
    expected = [tuple(sorted(row.items())) for row in social_impact_effects(full)]
    with TestPipeline(runner="FnApiRunner") as pipeline:
        once = pipeline | "Once" >> beam.Create(full) | "Whole" >> SocialImpactEffects()
        again = (_updating(pipeline | "Again" >> beam.Create([early, *full, early]))
                 | "Updating" >> SocialImpactEffects())
        assert_that(once | "OnceRows" >> beam.Map(lambda row: tuple(sorted(row.items()))), equal_to(expected),
                    label="once")
        assert_that(again | "AgainRows" >> beam.Map(lambda row: tuple(sorted(row.items()))), equal_to(expected),
                    label="again")


def test_the_stream_keeps_plain_contributions_and_sends_weighed_differences():
    """What the state keeps is the plain contribution (no replicates: a stream's state stays small), and what it
    sends is plain too, weighed by the fold; the deltas add up to the weighed contribution of the newest
    profile."""
    from writer_stubs import Value

    table = social_impact_effects_table(resamples=30, seed=4)
    deltas = _ContributionDeltas((table,))
    cell = Value()
    early = _profile("A", orders=[(1, "100.00")], last_seen_day=20)
    sent = [*deltas.process(("A", early), last=cell), *deltas.process(("A", CUSTOMERS[0]), last=cell)]
    import pickle

    _, stored = pickle.loads(cell.read())
    assert all(isinstance(value, int) for sums in stored.values() for value in sums.values())
    assert all(isinstance(sums, Unweighed) for (_, group), (sums, _, _) in sent if group != "__bounds__"), \
        "weighed in the fold, after the shuffle"
    net = merged_contributions((group, sums.weighed()) for (_, group), (sums, _, _) in sent if group != "__bounds__")
    want = merged_contributions((group, weighed("A", sums, 30, 4)) for group, sums in effects_contributions(
        CUSTOMERS[0]))
    net = {group: {k: v for k, v in sums.items() if v.any()} for group, sums in net.items()}
    assert net.keys() == want.keys()
    for group in want:
        assert net[group].keys() == want[group].keys()
        assert all(np.array_equal(net[group][k], want[group][k]) for k in want[group])


def _world_profiles(config: GeneratorConfig) -> list[CustomerProfile]:
    """Profiles of a generated world straight from its events, without the pipeline (40 worlds through Beam would
    take minutes): a customer's sessions are those logged in or on a device one of their logged-in sessions or
    orders names (the pipeline stitches the same devices, tests/test_journey_tables.py holds it to a reference)."""
    world = records_by_topic(config, b"k")
    devices = {record["anonymous_id"]: record["customer_id"]
               for topic in ("web_sessions", "orders") for record in world.get(topic, ())
               if record["customer_id"] and record["anonymous_id"]}
    sessions, orders, interactions = defaultdict(list), defaultdict(list), defaultdict(list)
    for session in world.get("web_sessions", ()):
        who = session["customer_id"] or devices.get(session["anonymous_id"])
        if who:
            sessions[who].append(session["event_time"])
    for order in world.get("orders", ()):
        orders[order["customer_id"]].append(order)
    for interaction in world.get("social_interactions", ()):
        if interaction["customer_id"]:
            interactions[interaction["customer_id"]].append(interaction_fact(interaction))
    return [build_profile(c, sessions[c], orders[c], interactions[c], [], [], session_times=sessions[c])
            for c in sorted(sessions.keys() | orders.keys() | interactions.keys())]


# What the populations measure, as opposed to what was planted: the generator's engaged customers who engage only
# after their first order are in the not-engaged population (as the table defines it), and their 1.25-times orders
# raise its order value. On a world of 100,000 customers over 120 days (seed 5) the order value lift is 0.236, 95%
# interval [0.216, 0.255] (measured with social_impact_effects on _world_profiles): within sampling error of the
# planted 0.25, and far inside a small world's interval (its median width at 300 customers and 150 days: 0.71).
LARGE_WORLD_ORDER_VALUE_LIFT = 0.236
SEEDS = 40


def test_the_intervals_cover_the_planted_order_value_lift_at_their_nominal_rate():
    """Over 40 seeded small worlds (300 customers, 150 days; the seed of the world and of the bootstrap both
    change), the 95% interval of the order value lift covers the planted 0.25 (engaged_spend_lift - 1) and the
    large-world estimate in at least 34 worlds. Coverage counts are Binomial(40, coverage): at the nominal 0.95,
    34 or more with probability 0.986 (P(X <= 33) = 0.0034), so a correct interval fails this 1 time in 300; at a
    true coverage of 0.80 it would pass with probability 0.24 only. (The seeds are fixed: the test is deterministic;
    the probabilities say how much a pass says.) The point estimates point the planted way (engaged higher: larger
    orders, 120-day against 25-day lifetimes) in most worlds: by chance alone, at 50:50, 27 or more of 40 would
    happen with probability 0.019."""
    planted = PlantedTruth().engaged_spend_lift - 1
    covered = {"planted": 0, "large world": 0}
    higher = defaultdict(int)
    for seed in range(SEEDS):
        profiles = _world_profiles(GeneratorConfig(customers=300, days=150, seed=100 + seed))
        rows = _by_key(social_impact_effects(profiles, resamples=200, seed=seed))
        lift = rows[("all", "order_value")]
        covered["planted"] += lift["lift_ci_low"] <= planted <= lift["lift_ci_high"]
        covered["large world"] += lift["lift_ci_low"] <= LARGE_WORLD_ORDER_VALUE_LIFT <= lift["lift_ci_high"]
        for metric in ("order_value", "ltv", "repeat_rate_90d", "retention_30d", "retention_60d", "retention_90d"):
            higher[metric] += (rows[("all", metric)]["lift"] or 0) > 0
    assert covered["planted"] >= 34 and covered["large world"] >= 34, covered
    assert all(higher[metric] >= 27 for metric in higher), dict(higher)
