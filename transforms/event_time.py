"""Event times as Beam timestamps and integer micros, computed with integer arithmetic.

Beam's `Timestamp.from_utc_datetime` walks pytz and a proto-parsed epoch on every call: 4 % of a backfill's samples
went there. A UTC-aware datetime minus the epoch, in whole microseconds, is the same instant exactly.
"""
from __future__ import annotations

import datetime as dt

from apache_beam.utils.timestamp import Timestamp

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
MICROSECOND = dt.timedelta(microseconds=1)


def micros(when: dt.datetime) -> int:
    """Microseconds since the epoch of an aware datetime (a naive one raises TypeError: it names no instant)."""
    return (when - EPOCH) // MICROSECOND


def from_micros(value: int) -> dt.datetime:
    return EPOCH + dt.timedelta(0, 0, value)  # positional: half the cost of microseconds=, for every decoded time


def timestamp_of(when: dt.datetime) -> Timestamp:
    return Timestamp(micros=micros(when))
