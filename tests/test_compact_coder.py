"""The coder between steps (transforms/compact_coder.py) and event-time arithmetic (transforms/event_time.py):
every value comes back equal and of the same type, compact where it can be, pickled where not."""
import datetime as dt
from decimal import Decimal

import apache_beam as beam
import pytest
from apache_beam.coders import coders, typecoders
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import Timestamp

from transforms.compact_coder import CompactPrimitivesCoder, use_compact_coders
from transforms.event_time import from_micros, micros, timestamp_of

UTC = dt.timezone.utc
ORDER = {"order_id": "o-1", "order_time": dt.datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=UTC),
         "total": Decimal("123.40"), "items": [{"price": Decimal("-0.5E+3"), "qty": 2}], "day": dt.date(2026, 3, 1),
         "anonymous_id": None, "rate": 0.25, "view_through": False, "path": ("a", "b"), "raw": b"\x00\xff"}


def _roundtrip(value, coder=CompactPrimitivesCoder()):
    return coder.decode(coder.encode(value))


def test_records_come_back_equal_with_the_same_types_and_smaller():
    back = _roundtrip(ORDER)
    assert back == ORDER
    assert str(back["total"]) == "123.40" and str(back["items"][0]["price"]) == "-5E+2"  # exponents kept
    assert back["order_time"].tzinfo is UTC and type(back["day"]) is dt.date
    assert len(CompactPrimitivesCoder().encode(ORDER)) < len(coders.FastPrimitivesCoder().encode(ORDER)) * 0.7


@pytest.mark.parametrize("value", [
    dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2))),  # another zone stays that zone
    dt.datetime(2026, 3, 1, 12),  # naive stays naive
    dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # before the epoch
    Decimal("NaN"), Decimal("-0"), Timestamp(micros=5), {"nested": [{1, 2}, frozenset({"x"})]},
])
def test_values_it_does_not_shorten_or_edge_values_come_back_as_they_went(value):
    back = _roundtrip({"v": value})["v"]
    assert type(back) is type(value)
    assert str(back) == str(value) and (back == value or value != value)
    if isinstance(value, dt.datetime):
        assert back.tzinfo == value.tzinfo


def test_a_pipeline_built_after_use_compact_coders_groups_records_through_it():
    registry = typecoders.CoderRegistry()
    use_compact_coders(registry)
    use_compact_coders(registry)  # once is enough: not stacked
    assert isinstance(registry.get_coder(object), CompactPrimitivesCoder)
    assert len(registry._fallback_coder._coders) == 2

    use_compact_coders()
    with TestPipeline(runner="FnApiRunner") as pipeline:
        grouped = (pipeline | beam.Create([("c1", ORDER), ("c1", {**ORDER, "order_id": "o-2"})])
                   | beam.GroupByKey()
                   | beam.MapTuple(lambda key, orders: (key, sorted((o["order_id"], o["total"], o["order_time"])
                                                                    for o in orders))))
        assert_that(grouped, equal_to([("c1", [("o-1", Decimal("123.40"), ORDER["order_time"]),
                                               ("o-2", Decimal("123.40"), ORDER["order_time"])])]))


def test_event_time_is_exact_to_the_microsecond_and_agrees_with_beam():
    when = dt.datetime(2026, 3, 1, 12, 30, 5, 999999, tzinfo=UTC)
    assert timestamp_of(when) == Timestamp.from_utc_datetime(when)
    assert from_micros(micros(when)) == when
    assert micros(dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == -1
    with pytest.raises(TypeError):
        micros(dt.datetime(2026, 3, 1))  # naive: no instant
