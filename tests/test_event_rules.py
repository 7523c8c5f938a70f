import datetime as dt
from decimal import Decimal

import pytest

from transforms.codec import DecodeError
from transforms.event_rules import EventRules

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def _reason(topic, record):
    with pytest.raises(DecodeError) as caught:
        EventRules().check(topic, record, NOW)
    return caught.value.reason


def test_generated_events_pass(sample_events):
    for topic, record in sample_events.items():
        EventRules().check(topic, record, NOW)


def test_rules_name_what_is_wrong(sample_events):
    order, session, social = sample_events["orders"], sample_events["web_sessions"], sample_events["social_interactions"]
    assert _reason("orders", dict(order, amount=Decimal("-1.00"))) == "negative_amount"
    assert _reason("orders", dict(order, currency="XXX")) == "unknown_currency"
    assert _reason("orders", dict(order, items=[dict(order["items"][0], quantity=0)])) == "invalid_item"
    assert _reason("orders", dict(order, event_time=dt.datetime(9999, 1, 1, tzinfo=dt.timezone.utc))) == "event_time_out_of_range"
    assert _reason("orders", dict(order, event_time=dt.datetime(1999, 1, 1, tzinfo=dt.timezone.utc))) == "event_time_out_of_range"
    assert _reason("web_sessions", dict(session, session_end=session["session_start"] - dt.timedelta(seconds=1))) == "session_ends_before_start"
    assert _reason("social_interactions", dict(social, sentiment=3.0)) == "sentiment_out_of_range"


def test_clock_skew_is_configurable(sample_events):
    soon = dict(sample_events["orders"], event_time=NOW + dt.timedelta(hours=5))
    EventRules().check("orders", soon, NOW)
    with pytest.raises(DecodeError):
        EventRules(max_clock_skew=dt.timedelta(hours=1)).check("orders", soon, NOW)
