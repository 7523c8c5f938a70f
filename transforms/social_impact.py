"""Does social pay? Per month and platform, customers engaged on social media against those who are not, and
customers whose mentions the brand answered against those it did not.

Engaged and not-engaged customers are compared like with like: both are customers the site knows (a session of
theirs, logged in or stitched by device, or an order, by then). Someone who engages on social media but has never
been on the site belongs to neither: counting them among the engaged made the engaged look as if they bought less,
since most of that audience never visits. They are reported apart, as reach.

For a month M and a platform p ('all': any platform), as of the end of M:
- engaged: customers the site knows whose first engagement on p came before the end of M;
- not_engaged (platform 'all' only, the baseline of every platform): customers the site knows who never engaged;
- social_only: people who engaged on p but whom the site does not know yet (reach: no order can be theirs);
- mention_answered / mention_unanswered: customers who mentioned the brand on p by then, and whether a brand
  reply on p followed one of their mentions within `reply_window`.
Then for the group's customers: the share with an order in M, orders and net revenue in M, average order value,
the 90-day repeat rate of first orders placed in M (only those 90 days old by `until`), and net revenue to date
per customer (LTV).
"""
from __future__ import annotations

import datetime as dt
import functools
from collections import defaultdict
from decimal import Decimal

import apache_beam as beam

from transforms.currency import to_cents
from transforms.customer_profiles import CustomerProfile
from transforms.retention import cohort_start
from transforms.whole_table import WholeTable, WholeTables, merged_contributions

ALL = "all"
GROUPS = ("engaged", "not_engaged", "social_only", "mention_answered", "mention_unanswered")
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
    on_site = profile.first_site_seen is not None and profile.first_site_seen < end
    if not engaged_on:
        if on_site:
            yield ALL, "not_engaged"
        return
    for platform in engaged_on | {ALL}:
        yield platform, "engaged" if on_site else "social_only"
    mentions = {platform: [answered for when, answered in outcomes if when < end]
                for platform, outcomes in mention_outcomes.items()}
    mentions[ALL] = [answered for platform in mentions for answered in mentions[platform]]
    for platform, answered in mentions.items():
        if answered:
            yield platform, "mention_answered" if any(answered) else "mention_unanswered"


def social_contributions(profile: CustomerProfile, reply_window: dt.timedelta = REPLY_WINDOW):
    """What one customer adds to the totals of each (platform, group) they belong to, month by month from their
    first_seen to their last_seen; from the month after, they stay in the groups of their last month with all their
    revenue to date (a "tail" counted in every later month). A first order is counted in the 90-day repeat rate once
    it is 90 days old: at once when the customer was seen that long after it, else by its time, against the end of
    what was seen."""
    outcomes = _mention_outcomes(profile, reply_window)
    first = profile.orders[0] if profile.orders else None
    repeated = int(first is not None and len(profile.orders) > 1
                   and profile.orders[1].time <= first.time + REPEAT_WINDOW)
    month, last_month = cohort_start(profile.first_seen, "month"), cohort_start(profile.last_seen, "month")
    while True:
        start, end = dt.datetime.combine(month, dt.time(), dt.timezone.utc), _month_end(month)
        in_month = [o for o in profile.orders if start <= o.time < end]
        to_date = sum((o.net for o in profile.orders if o.time < end), Decimal(0))
        sums = {("customers", month): 1, ("to_date", month): to_date}
        if in_month:
            sums.update({("converted", month): 1, ("orders", month): len(in_month),
                         ("revenue", month): sum((o.net for o in in_month), Decimal(0))})
        if first is not None and start <= first.time < end:
            if first.time + REPEAT_WINDOW <= profile.last_seen:
                sums.update({("firsts", month): 1, ("repeated", month): repeated})
            else:
                sums.update({("first_due", first.time): 1, ("repeated_due", first.time): repeated})
        groups = list(_groups(profile, outcomes, end))
        for group in groups:
            yield group, sums
        month = _month_end(month).date()
        if month > last_month:
            for group in groups:
                yield group, {("tail_customers", month): 1, ("tail_to_date", month): to_date}
            return


def social_rows(totals: dict, earliest: dt.datetime, until: dt.datetime) -> list[dict]:
    """The rows of every month from the one of `earliest` (the first first_seen) to the one of `until` (the latest
    event seen), from the (platform, group) totals."""
    if earliest is None:
        return []
    due = until - REPEAT_WINDOW
    rows = []
    for (platform, group), sums in sorted(totals.items()):
        firsts, repeated = defaultdict(int), defaultdict(int)
        for subkey, value in sums.items():
            if subkey[0] in ("firsts", "repeated"):
                (firsts if subkey[0] == "firsts" else repeated)[subkey[1]] += value
            elif subkey[0] in ("first_due", "repeated_due") and subkey[1] <= due:
                (firsts if subkey[0] == "first_due" else repeated)[cohort_start(subkey[1], "month")] += value
        tail_customers, tail_to_date = 0, Decimal(0)
        month = cohort_start(earliest, "month")
        while month <= cohort_start(until, "month"):
            tail_customers += sums.get(("tail_customers", month), 0)
            tail_to_date += sums.get(("tail_to_date", month), Decimal(0))
            customers = sums.get(("customers", month), 0) + tail_customers
            if customers > 0:
                orders = sums.get(("orders", month), 0)
                revenue = sums.get(("revenue", month), Decimal(0))
                to_date = sums.get(("to_date", month), Decimal(0)) + tail_to_date
                rows.append({
                    "month": month, "platform": platform, "group": group, "customers": customers,
                    "conversion_rate": sums.get(("converted", month), 0) / customers,
                    "orders": orders, "revenue": to_cents(revenue),
                    "average_order_value": to_cents(revenue / orders) if orders else None,
                    "first_orders_90d": firsts[month],
                    "repeat_rate_90d": repeated[month] / firsts[month] if firsts[month] else None,
                    "ltv": to_cents(to_date / customers)})
            month = _month_end(month).date()
    return rows


def social_impact(profiles: list[CustomerProfile], until: dt.datetime,
                  reply_window: dt.timedelta = REPLY_WINDOW) -> list[dict]:
    if not profiles:
        return []
    totals = merged_contributions(group for p in profiles for group in social_contributions(p, reply_window))
    return social_rows(totals, min(p.first_seen for p in profiles), until)


def social_impact_table(reply_window: dt.timedelta = REPLY_WINDOW) -> WholeTable:
    """social_impact from CustomerProfiles (re-emitted as they grow, in a stream), as of the latest event seen.
    Computed with the other whole tables by WholeTables."""
    return WholeTable("social_impact", functools.partial(social_contributions, reply_window=reply_window),
                      social_rows)


class SocialImpact(beam.PTransform):
    """CustomerProfile per customer → social_impact rows alone."""

    def __init__(self, reply_window: dt.timedelta = REPLY_WINDOW):
        super().__init__()
        self.reply_window = reply_window

    def expand(self, profiles):
        return (profiles | "SocialImpact" >> WholeTables(social_impact_table(self.reply_window)))["social_impact"]
