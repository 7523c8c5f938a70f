import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.retention import CustomerHistory, cohort_start, period_index, retention_cohorts

MON = dt.datetime(2026, 9, 7, 10, tzinfo=dt.timezone.utc)  # a Monday
DAY = dt.timedelta(days=1)


def test_weekly_cohort_by_hand():
    customers = [
        CustomerHistory("a", ((MON, Decimal("10")), (MON + 8 * DAY, Decimal("20")))),  # weeks 0 and 1
        CustomerHistory("b", ((MON + 2 * DAY, Decimal("30")), (MON + 15 * DAY, Decimal("0")))),  # week 0, 2 (refunded)
        CustomerHistory("c", ((MON + 9 * DAY, Decimal("5")),)),  # next week's cohort
    ]
    rows = retention_cohorts(customers, "week", until=MON + 16 * DAY)
    first = [r for r in rows if r["cohort_start"] == MON.date()]
    assert [(r["period_index"], r["active_customers"], r["retention_rate"], r["retention_rate_on_or_after"],
             r["net_revenue"], r["cumulative_revenue_per_customer"]) for r in first] == [
        (0, 2, 1.0, 1.0, Decimal("40.00"), Decimal("20.00")),
        (1, 1, 0.5, 1.0, Decimal("20.00"), Decimal("30.00")),
        (2, 1, 0.5, 0.5, Decimal("0.00"), Decimal("30.00")),
    ]
    second = [r for r in rows if r["cohort_start"] == (MON + 7 * DAY).date()]
    assert [(r["period_index"], r["cohort_size"]) for r in second] == [(0, 1), (1, 1)]


def test_segments_make_their_own_cohorts():
    customers = [CustomerHistory("a", ((MON, Decimal("1")),), {"social_engagement": "before_first_order"}),
                 CustomerHistory("b", ((MON, Decimal("1")),), {"social_engagement": "none"})]
    rows = retention_cohorts(customers, "month", until=MON)
    assert {(r["segment_type"], r["segment"], r["cohort_size"]) for r in rows} == {
        ("all", "all", 2), ("social_engagement", "before_first_order", 1), ("social_engagement", "none", 1)}


def test_calendar_helpers():
    assert cohort_start(dt.date(2026, 9, 13), "week") == dt.date(2026, 9, 7)
    assert cohort_start(dt.date(2026, 9, 13), "month") == dt.date(2026, 9, 1)
    assert period_index(dt.date(2026, 11, 1), dt.date(2027, 2, 3), "month") == 3
    with pytest.raises(ValueError):
        cohort_start(dt.date(2026, 9, 13), "fortnight")


histories = st.lists(st.lists(st.tuples(st.integers(0, 120), st.integers(-50, 200)), min_size=0, max_size=6),
                     min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(raw=histories, grain=st.sampled_from(["week", "month"]))
def test_rates_are_proportions_and_active_never_exceeds_the_cohort(raw, grain):
    customers = [CustomerHistory(f"c{i}", tuple((MON + days * DAY, Decimal(value)) for days, value in orders),
                                 {"acquisition_last_touch": "Email" if i % 2 else "Direct"})
                 for i, orders in enumerate(raw)]
    rows = retention_cohorts(customers, grain, until=MON + 130 * DAY)
    for row in rows:
        assert 0 <= row["active_customers"] <= row["cohort_size"]
        assert 0.0 <= row["retention_rate"] <= row["retention_rate_on_or_after"] <= 1.0
        if row["period_index"] == 0:
            assert row["retention_rate"] == 1.0  # everyone's first order falls in period 0
    sizes = {(r["cohort_start"], r["segment_type"], r["segment"]): r["cohort_size"] for r in rows}
    all_sizes = sum(size for (start, kind, _), size in sizes.items() if kind == "all")
    assert all_sizes == sum(1 for orders in raw if orders)
