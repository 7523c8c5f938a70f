"""Retention cohorts as a pure function: customers grouped by the week or month of their first order, per segment;
for each period since then, how many were active, retention ("on" and "on or after") and the LTV curve.

Revenue is net: a refund or cancellation takes its order's value back in the period the order was placed, so an
LTV curve never counts money that was returned.
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

import apache_beam as beam

from transforms.currency import to_cents
from transforms.whole_table import WholeTable

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


def retention_cohorts(customers: list[CustomerHistory], grain: str, until: dt.datetime) -> list[dict]:
    """One row per (cohort, segment type, segment, period) from period 0 to the period of `until`."""
    groups: dict = defaultdict(list)
    for customer in customers:
        if not customer.orders:
            continue
        first = min(t for t, _ in customer.orders)
        start = cohort_start(first, grain)
        for segment_type, segment in {"all": "all", **customer.segments}.items():
            groups[(start, segment_type, segment)].append(customer)
    rows = []
    for (start, segment_type, segment), members in sorted(groups.items()):
        last_period = period_index(start, until, grain)
        active = defaultdict(set)
        revenue = defaultdict(Decimal)
        for customer in members:
            for when, value in customer.orders:
                index = period_index(start, when, grain)
                if index <= last_period:
                    active[index].add(customer.customer_id)
                    revenue[index] += Decimal(value)
        size = len(members)
        cumulative = Decimal(0)
        for index in range(last_period + 1):
            later = set().union(*(active[i] for i in range(index, last_period + 1)))
            cumulative += revenue[index]
            rows.append({"cohort_grain": grain, "cohort_start": start, "segment_type": segment_type,
                         "segment": segment, "period_index": index, "cohort_size": size,
                         "active_customers": len(active[index]), "retention_rate": len(active[index]) / size,
                         "retention_rate_on_or_after": len(later) / size,
                         "net_revenue": to_cents(revenue[index]),
                         "cumulative_revenue_per_customer": to_cents(cumulative / size)})
    return rows


def _cohorts(profiles) -> list[dict]:
    if not profiles:
        return []
    until = max(p.last_seen for p in profiles)
    histories = [p.history() for p in profiles]
    return [row for grain in GRAINS for row in retention_cohorts(histories, grain, until)]


class RetentionCohorts(beam.PTransform):
    """[every customer's latest profile] (from AllProfiles) → retention_cohorts rows for weekly and monthly cohorts,
    segmented by acquisition channel (last and first touch of the first order) and social engagement, as of the
    latest event seen."""

    def expand(self, all_profiles):
        return all_profiles | "Cohorts" >> WholeTable("retention_cohorts", _cohorts)
