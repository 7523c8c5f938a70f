"""Rules a decoded event must meet beyond its schema: what Avro cannot say (no negative amounts, sane times).

A record that breaks one is malformed input, not data: the decode step sends it to the dead letters.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from transforms.codec import DecodeError

# ISO 4217 codes the shop sells in; a record in another currency cannot be valued.
CURRENCIES = frozenset({"EUR", "USD", "GBP", "CHF", "SEK", "NOK", "DKK", "PLN", "CAD", "AUD", "JPY"})
EARLIEST_EVENT_TIME = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class EventRules:
    max_clock_skew: dt.timedelta = dt.timedelta(days=1)  # how far past "now" an event time may lie
    # A web session ends after 30 minutes without a hit (GA4's default) and at most a day after it starts: a longer
    # one is a broken clock or tracker, and would stretch a journey's touches across its whole span.
    max_session: dt.timedelta = dt.timedelta(days=1)

    def check(self, topic: str, record: dict, now: dt.datetime) -> None:
        """Raise DecodeError with the reason of the first rule `record` breaks."""
        event_time = record["event_time"]
        if not EARLIEST_EVENT_TIME <= event_time <= now + self.max_clock_skew:
            raise DecodeError("event_time_out_of_range", f"event_time {event_time.isoformat()} is not plausible")
        if topic == "orders":
            _check_order(record)
        elif topic == "web_sessions":
            if record["session_end"] < record["session_start"]:
                raise DecodeError("session_ends_before_start", f"session {record['session_id']} ends before it starts")
            if record["session_end"] - record["session_start"] > self.max_session:
                raise DecodeError("session_too_long", f"session {record['session_id']} lasts "
                                                      f"{record['session_end'] - record['session_start']}, more than "
                                                      f"{self.max_session}")
            if record["pageviews"] < 0:
                raise DecodeError("negative_pageviews", f"pageviews={record['pageviews']}")
        elif topic == "social_interactions":
            sentiment = record["sentiment"]
            if sentiment is not None and not -1.0 <= sentiment <= 1.0:
                raise DecodeError("sentiment_out_of_range", f"sentiment={sentiment}")


def _check_order(record: dict) -> None:
    if record["amount"] < 0:
        raise DecodeError("negative_amount", f"order {record['order_id']} amount={record['amount']}")
    if record["currency"] not in CURRENCIES:
        raise DecodeError("unknown_currency", f"order {record['order_id']} currency={record['currency']!r}")
    for item in record["items"]:
        if item["quantity"] <= 0 or item["unit_price"] < 0:
            raise DecodeError("invalid_item", f"order {record['order_id']} item {item['sku']}: "
                                              f"quantity={item['quantity']} unit_price={item['unit_price']}")
