"""social_impact_effects: engaged against comparable not-engaged customers on a few outcomes, each with a
bootstrap confidence interval and the sample sizes behind it, as of the latest event seen.

Populations (like with like, as in social_impact: only customers the site knows, by a session or an order):
- engaged on platform p: engaged on p (organic interaction, customer_profiles.is_engagement) at or before their
  first order, or at any time when they have no order. Customers who start following the brand only after buying
  stay out of it: counting them would credit engagement with purchases that came first.
- not_engaged (the baseline of every platform): customers the site knows with no engagement on any platform at or
  before their first order (or ever, without an order). Buyers who engaged only afterwards are in it: they were
  not engaged when they chose to buy.

Metrics (`METRICS`): conversion (share with any order), order_value (net value per order), ltv (net revenue to date
per customer), repeat_rate_90d (first orders followed by another order within 90 days) and retention_Nd (first
orders followed by another order more than N-30 and at most N days after them: still buying in the N-th 30 days).
A first order counts in the last four once N days have passed since the end of its week (Monday to Monday, UTC) by
the latest event: keying them by week, not by day, keeps the totals small (a stream rewrites them at every update).

Intervals: a Poisson bootstrap over customers. Each customer gets `resamples` Poisson(1) weights drawn from a
generator seeded by (seed, a stable hash of their id), so the same customer weighs the same in every run, step and
worker; a contribution carries its plain sums and the weighted ones side by side (an int64 array: index 0 weight 1,
then the replicates), and the totals of every replicate are folded like any other sum. A stream's difference of a
re-emitted profile is taken on the plain sums and weighted after (weights × (now - before)), so its state holds no
replicates. Money is in integer cents, so sums and differences are exact. The interval of a value or a lift is the
percentile interval of its replicates.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections import defaultdict
from decimal import Decimal

import apache_beam as beam
import numpy as np

from transforms.currency import to_cents
from transforms.customer_profiles import CustomerProfile
from transforms.retention import cohort_start
from transforms.social_impact import ALL
from transforms.whole_table import WholeTable, WholeTables, merged_contributions

TABLE = "social_impact_effects"
ENGAGED, NOT_ENGAGED = "engaged", "not_engaged"
RESAMPLES = 200
SEED = 0
CONFIDENCE = 0.95
# The table's one group: a row compares two populations, and WholeTables computes a group's rows from its own
# totals alone. It holds a few measures per (population, platform) and week of first orders.
GROUP = "effects"
DAY = dt.timedelta(days=1)
WEEK = 7 * DAY
REPEAT_DAYS = 90
RETENTION_DAYS = (30, 60, 90)
RETENTION_SPAN_DAYS = 30  # retention_Nd looks for an order in the N-th span of this many days after the first
# metric → (how the lift compares engaged with not-engaged, numerator measure, denominator measure)
METRICS = {
    "conversion": ("difference", "converted", "customers"),
    "order_value": ("ratio", "revenue_cents", "orders"),
    "ltv": ("ratio", "revenue_cents", "customers"),
    "repeat_rate_90d": ("difference", f"repeated_{REPEAT_DAYS}d", f"first_orders_{REPEAT_DAYS}d"),
    **{f"retention_{n}d": ("difference", f"retained_{n}d", f"first_orders_{n}d") for n in RETENTION_DAYS},
}
MONEY = frozenset({"order_value", "ltv"})  # in cents in the totals, in the reporting currency in the rows
HORIZON_DAYS = {f"repeated_{REPEAT_DAYS}d": REPEAT_DAYS, **{f"retained_{n}d": n for n in RETENTION_DAYS}}


def engaged_platforms(profile: CustomerProfile) -> set[str]:
    """Platforms the customer engaged on at or before their first order (at any time, without an order)."""
    first = profile.first_order_time
    return {platform for when, platform, _ in profile.engagements if first is None or when <= first}


def customer_measures(profile: CustomerProfile) -> dict:
    """{(measure, week of the first order or None): count or cents} of one customer."""
    measures = {("customers", None): 1}
    if not profile.orders:
        return measures
    first = profile.orders[0].time
    week = cohort_start(first, "week")
    net = sum((o.net for o in profile.orders), Decimal(0))
    measures.update({("converted", None): 1, ("orders", None): len(profile.orders),
                     ("revenue_cents", None): int(to_cents(net).scaleb(2)), ("first_orders", week): 1})
    later = [o.time - first for o in profile.orders[1:]]
    if any(after <= REPEAT_DAYS * DAY for after in later):
        measures[(f"repeated_{REPEAT_DAYS}d", week)] = 1
    for n in RETENTION_DAYS:
        low, high = (n - RETENTION_SPAN_DAYS) * DAY, n * DAY
        if any((low < after or low == dt.timedelta(0)) and after <= high for after in later):
            measures[(f"retained_{n}d", week)] = 1
    return measures


def effects_contributions(profile: CustomerProfile):
    """(GROUP, {(population, platform, measure, week or None): value}) of one customer the site knows: to
    (engaged, p) for each platform p they engaged on before buying and (engaged, all), or to (not_engaged, all)."""
    if profile.first_site_seen is None:
        return
    platforms = engaged_platforms(profile)
    populations = [(ENGAGED, p) for p in sorted(platforms | {ALL})] if platforms else [(NOT_ENGAGED, ALL)]
    measures = customer_measures(profile)
    yield GROUP, {(population, platform, measure, week): value
                  for population, platform in populations for (measure, week), value in measures.items()}


def customer_key(customer_id: str) -> int:
    """A stable 64-bit hash of the customer id (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(customer_id.encode(), digest_size=8).digest(), "big")


def replicate_weights(customer_id: str, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[1, w_1, ..., w_resamples]: the customer's weight in the plain sums, then in each bootstrap replicate,
    Poisson(1) from a generator seeded by (seed, the customer)."""
    weights = np.ones(resamples + 1, dtype=np.int64)
    weights[1:] = np.random.default_rng([seed, customer_key(customer_id)]).poisson(1.0, resamples)
    return weights


def weighed(customer_id: str, sums: dict, resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """A customer's plain sums (or the difference of two of their contributions) with their replicates."""
    weights = replicate_weights(customer_id, resamples, seed)
    return {subkey: weights * value for subkey, value in sums.items()}


def _interval(replicates: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    """The percentile interval of the replicates that are defined; none when fewer than half are (a denominator
    that is often zero in a resample says the sample is too small to say)."""
    defined = replicates[np.isfinite(replicates)]
    if len(replicates) == 0 or len(defined) < len(replicates) / 2:
        return None, None
    low, high = np.percentile(defined, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(low), float(high)


def _point(values: np.ndarray) -> float | None:
    return float(values[0]) if np.isfinite(values[0]) else None


def _share(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1), np.nan)


def _lift(kind: str, engaged: np.ndarray, not_engaged: np.ndarray) -> np.ndarray:
    if kind == "difference":
        return engaged - not_engaged
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(not_engaged != 0, engaged / np.where(not_engaged != 0, not_engaged, 1) - 1, np.nan)


def population_measures(sums: dict, until: dt.datetime, resamples: int) -> dict:
    """{(population, platform): {measure: replicate array}}: weekly first orders counted where their horizon has
    passed by `until` (first_orders_Nd for each horizon N)."""
    zero = lambda: np.zeros(resamples + 1, dtype=np.int64)
    measures = defaultdict(lambda: defaultdict(zero))
    for (population, platform, measure, week), value in sums.items():
        into = measures[(population, platform)]
        if week is None:
            into[measure] = into[measure] + value
            continue
        week_end = dt.datetime.combine(week, dt.time(), dt.timezone.utc) + WEEK
        if measure == "first_orders":
            for n in sorted({REPEAT_DAYS, *RETENTION_DAYS}):
                if week_end + n * DAY <= until:
                    into[f"first_orders_{n}d"] = into[f"first_orders_{n}d"] + value
        elif week_end + HORIZON_DAYS[measure] * DAY <= until:
            into[measure] = into[measure] + value
    return measures


def effects_rows(totals: dict, earliest, until, resamples: int = RESAMPLES, seed: int = SEED,
                 confidence: float = CONFIDENCE) -> list[dict]:
    """One row per (platform, metric), from the totals of GROUP as of `until` (the latest event seen)."""
    sums = totals.get(GROUP)
    if not sums or until is None:
        return []
    measures = population_measures(sums, until, resamples)
    zero = np.zeros(resamples + 1, dtype=np.int64)
    baseline = measures.get((NOT_ENGAGED, ALL), {})
    rows = []
    for population, platform in sorted(measures):
        if population != ENGAGED or not measures[(population, platform)]["customers"][0]:
            continue  # every engaged customer of the platform moved away (a stream's update)
        engaged = measures[(population, platform)]
        for metric, (kind, numerator, denominator) in METRICS.items():
            unit = 100 if metric in MONEY else 1
            values = {name: _share(group.get(numerator, zero), group.get(denominator, zero)) / unit
                      for name, group in ((ENGAGED, engaged), (NOT_ENGAGED, baseline))}
            lift = _lift(kind, values[ENGAGED], values[NOT_ENGAGED])
            row = {"platform": platform, "metric": metric, "lift_kind": kind}
            for name, replicates in ((ENGAGED, values[ENGAGED]), (NOT_ENGAGED, values[NOT_ENGAGED]), ("lift", lift)):
                low, high = _interval(replicates[1:], confidence)
                row.update({name: _point(replicates), f"{name}_ci_low": low, f"{name}_ci_high": high})
            row.update({
                "engaged_customers": int(engaged["customers"][0]),
                "not_engaged_customers": int(baseline.get("customers", zero)[0]),
                "engaged_n": int(engaged.get(denominator, zero)[0]),
                "not_engaged_n": int(baseline.get(denominator, zero)[0]),
                "resamples": resamples, "seed": seed, "confidence": confidence, "as_of": until})
            rows.append(row)
    return rows


def social_impact_effects(profiles: list[CustomerProfile], resamples: int = RESAMPLES, seed: int = SEED,
                          confidence: float = CONFIDENCE) -> list[dict]:
    """The table from every profile at once, as of the latest last_seen (in memory: tests, benchmarks)."""
    if not profiles:
        return []
    totals = merged_contributions((group, weighed(p.customer_id, sums, resamples, seed))
                                  for p in profiles for group, sums in effects_contributions(p))
    return effects_rows(totals, None, max(p.last_seen for p in profiles), resamples, seed, confidence)


def social_impact_effects_table(resamples: int = RESAMPLES, seed: int = SEED,
                                confidence: float = CONFIDENCE) -> WholeTable:
    """social_impact_effects from CustomerProfiles (re-emitted as they grow, in a stream), as of the latest event
    seen. Computed with the other whole tables by WholeTables, the replicates weighed in after a stream's
    difference."""
    if resamples < 0 or not 0 < confidence < 1:
        raise ValueError(f"resamples {resamples} must be >= 0 and confidence {confidence} within (0, 1)")
    return WholeTable(TABLE, effects_contributions,
                      functools.partial(effects_rows, resamples=resamples, seed=seed, confidence=confidence),
                      weigh=functools.partial(weighed, resamples=resamples, seed=seed))


class SocialImpactEffects(beam.PTransform):
    """CustomerProfile per customer → social_impact_effects rows alone."""

    def __init__(self, resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE):
        super().__init__()
        self.table = social_impact_effects_table(resamples, seed, confidence)

    def expand(self, profiles):
        return (profiles | "Effects" >> WholeTables(self.table))[TABLE]
