"""Does social pay? Per month and platform, customers engaged on social media against those who are not, and
customers whose mentions the brand answered against those it did not.

For a month M and a platform p ('all': any platform), as of the end of M:
- engaged: customers whose first engagement on p came before the end of M;
- not_engaged (platform 'all' only, the baseline of every platform): customers seen by then who never engaged;
- mention_answered / mention_unanswered: customers who mentioned the brand on p by then, and whether a brand
  reply on p followed one of their mentions within `reply_window`.
Then for the group's customers: the share with an order in M, orders and net revenue in M, average order value,
the 90-day repeat rate of first orders placed in M (only those 90 days old by `until`), and net revenue to date
per customer (LTV).
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal

import apache_beam as beam

from transforms.currency import to_cents
from transforms.customer_profiles import CustomerProfile
from transforms.retention import cohort_start
from transforms.whole_table import WholeTable

ALL = "all"
GROUPS = ("engaged", "not_engaged", "mention_answered", "mention_unanswered")
REPEAT_WINDOW = dt.timedelta(days=90)
REPLY_WINDOW = dt.timedelta(days=7)


def _month_end(start: dt.date) -> dt.datetime:
    following = (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return dt.datetime.combine(following, dt.time(), dt.timezone.utc)


def _mention_outcomes(profile: CustomerProfile, reply_window: dt.timedelta) -> dict[str, list]:
    """platform → [(mention time, answered)]."""
    replies = defaultdict(list)
    for when, platform, kind in profile.engagements:
        if kind == "brand_reply":
            replies[platform].append(when)
    outcomes = defaultdict(list)
    for when, platform, kind in profile.engagements:
        if kind == "mention":
            outcomes[platform].append((when, any(when <= r <= when + reply_window for r in replies[platform])))
    return outcomes


def _groups(profile: CustomerProfile, mention_outcomes: dict[str, list], end: dt.datetime):
    """(platform, group) pairs the customer belongs to as of `end`."""
    if profile.first_seen >= end:
        return
    engaged_on = {platform for when, platform, _ in profile.engagements if when < end}
    if not engaged_on:
        yield ALL, "not_engaged"
        return
    for platform in engaged_on | {ALL}:
        yield platform, "engaged"
    mentions = {platform: [answered for when, answered in outcomes if when < end]
                for platform, outcomes in mention_outcomes.items()}
    mentions[ALL] = [answered for platform in mentions for answered in mentions[platform]]
    for platform, answered in mentions.items():
        if answered:
            yield platform, "mention_answered" if any(answered) else "mention_unanswered"


def social_impact(profiles: list[CustomerProfile], until: dt.datetime,
                  reply_window: dt.timedelta = REPLY_WINDOW) -> list[dict]:
    if not profiles:
        return []
    month = cohort_start(min(p.first_seen for p in profiles), "month")
    outcomes = {p.customer_id: _mention_outcomes(p, reply_window) for p in profiles}  # the same every month
    rows = []
    while month <= cohort_start(until, "month"):
        start = dt.datetime.combine(month, dt.time(), dt.timezone.utc)
        end = _month_end(month)
        members = defaultdict(list)
        for profile in profiles:
            for key in _groups(profile, outcomes[profile.customer_id], end):
                members[key].append(profile)
        for (platform, group), customers in sorted(members.items()):
            in_month = [o for p in customers for o in p.orders if start <= o.time < end]
            revenue = sum((o.net for o in in_month), Decimal(0))
            to_date = sum((o.net for p in customers for o in p.orders if o.time < end), Decimal(0))
            firsts = [p for p in customers if p.orders and start <= p.orders[0].time < end
                      and p.orders[0].time + REPEAT_WINDOW <= until]
            repeated = [p for p in firsts if len(p.orders) > 1 and p.orders[1].time <= p.orders[0].time + REPEAT_WINDOW]
            rows.append({
                "month": month, "platform": platform, "group": group, "customers": len(customers),
                "conversion_rate": len({p.customer_id for p in customers
                                        if any(start <= o.time < end for o in p.orders)}) / len(customers),
                "orders": len(in_month), "revenue": to_cents(revenue),
                "average_order_value": to_cents(revenue / len(in_month)) if in_month else None,
                "first_orders_90d": len(firsts),
                "repeat_rate_90d": len(repeated) / len(firsts) if firsts else None,
                "ltv": to_cents(to_date / len(customers))})
        month = _month_end(month).date()
    return rows


class SocialImpact(beam.PTransform):
    """[every customer's latest profile] (from AllProfiles) → social_impact rows, as of the latest event seen."""

    def __init__(self, reply_window: dt.timedelta = REPLY_WINDOW):
        super().__init__()
        self.reply_window = reply_window

    def expand(self, all_profiles):
        return all_profiles | "SocialImpact" >> WholeTable("social_impact", self._rows)

    def _rows(self, profiles) -> list[dict]:
        if not profiles:
            return []
        return social_impact(profiles, max(p.last_seen for p in profiles), self.reply_window)
