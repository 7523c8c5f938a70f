"""Retention cohorts as a pure function: customers grouped by the week or month of their first order, per segment;
for each period since then, how many were active, retention ("on" and "on or after") and the LTV curve.

Revenue is net: a refund or cancellation takes its order's value back in the period the order was placed, so an
LTV curve never counts money that was returned.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

import apache_beam as beam

from transforms.currency import to_cents
from transforms.whole_table import WholeTable, WholeTables, merged_contributions

GRAINS = ("week", "month")


@dataclass(frozen=True)
class CustomerHistory:
    customer_id: str
    orders: tuple  # ((placed time, net value after refunds/cancellations), ...)
    segments: dict = field(default_factory=dict)  # segment_type → segment; "all" is always added


def cohort_start(when: dt.datetime | dt.date, grain: str) -> dt.date:
    day = when.date() if isinstance(when, dt.datetime) else when
    if grain == "week":
        return day - dt.timedelta(days=day.weekday())  # Monday
    if grain == "month":
        return day.replace(day=1)
    raise ValueError(f"grain {grain!r}: one of {', '.join(GRAINS)}")


def period_index(start: dt.date, when: dt.datetime | dt.date, grain: str) -> int:
    day = cohort_start(when, grain)
    if grain == "week":
        return (day - start).days // 7
    return (day.year - start.year) * 12 + day.month - start.month


def cohort_contributions(customer: CustomerHistory, grains=GRAINS):
    """What one customer adds to the totals of their cohorts ((grain, cohort start as ISO date, segment type,
    segment)):
    a member, active in each period with an order, last active in one, and the revenue of each period."""
    if not customer.orders:
        return
    first = min(t for t, _ in customer.orders)
    for grain in grains:
        start = cohort_start(first, grain)
        sums: dict = {"size": 1}
        periods = set()
        for when, value in customer.orders:
            index = period_index(start, when, grain)
            periods.add(index)
            sums[("revenue", index)] = sums.get(("revenue", index), Decimal(0)) + Decimal(value)
        for index in periods:
            sums[("active", index)] = 1
        sums[("last_active", max(periods))] = 1
        for segment_type, segment in {"all": "all", **customer.segments}.items():
            yield (grain, start.isoformat(), segment_type, segment), sums  # a key a grouping encodes deterministically


def cohort_rows(totals: dict, until: dt.datetime) -> list[dict]:
    """One row per (cohort, segment type, segment, period) from period 0 to the period of `until` (at or after every
    order), from the cohorts' totals."""
    rows = []
    for (grain, start, segment_type, segment), sums in sorted(totals.items()):
        size = sums.get("size", 0)
        if size <= 0:
            continue  # every member moved to another cohort
        start = dt.date.fromisoformat(start)
        last_period = period_index(start, until, grain)
        on_or_after = [0] * (last_period + 2)  # members active in a period at or after each one
        for index in range(last_period, -1, -1):
            on_or_after[index] = on_or_after[index + 1] + sums.get(("last_active", index), 0)
        cumulative = Decimal(0)
        for index in range(last_period + 1):
            active = sums.get(("active", index), 0)
            revenue = sums.get(("revenue", index), Decimal(0))
            cumulative += revenue
            rows.append({"cohort_grain": grain, "cohort_start": start, "segment_type": segment_type,
                         "segment": segment, "period_index": index, "cohort_size": size,
                         "active_customers": active, "retention_rate": active / size,
                         "retention_rate_on_or_after": on_or_after[index] / size,
                         "net_revenue": to_cents(revenue),
                         "cumulative_revenue_per_customer": to_cents(cumulative / size)})
    return rows


def retention_cohorts(customers: list[CustomerHistory], grain: str, until: dt.datetime) -> list[dict]:
    """One row per (cohort, segment type, segment, period) from period 0 to the period of `until`."""
    totals = merged_contributions(group for customer in customers for group in cohort_contributions(customer, (grain,)))
    return cohort_rows(totals, until)


def _contributions(profile):
    return cohort_contributions(profile.history())


def _rows(totals: dict, earliest, until) -> list[dict]:
    return cohort_rows(totals, until) if until is not None else []


# retention_cohorts from CustomerProfiles (re-emitted as they grow, in a stream): weekly and monthly cohorts,
# segmented by acquisition channel (last and first touch of the first order) and social engagement, as of the latest
# event seen. Computed with the other whole tables by WholeTables.
RETENTION_COHORTS = WholeTable("retention_cohorts", _contributions, _rows)


class RetentionCohorts(beam.PTransform):
    """CustomerProfile per customer → retention_cohorts rows alone."""

    def expand(self, profiles):
        return (profiles | "Cohorts" >> WholeTables(RETENTION_COHORTS))["retention_cohorts"]
