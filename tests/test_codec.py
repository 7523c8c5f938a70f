import datetime as dt
import json
import struct
from decimal import Decimal

import pytest

from transforms import codec
from transforms.codec import DecodeError


@pytest.mark.parametrize("fmt", codec.FORMATS)
@pytest.mark.parametrize("topic", ["social_interactions", "web_sessions", "orders"])
def test_every_format_round_trips(sample_events, topic, fmt):
    record = sample_events[topic]
    value, headers = codec.encode(topic, record, fmt)
    assert codec.decode(topic, value, headers) == record
    # Without headers the format is sniffed from the bytes.
    assert codec.decode(topic, value, None) == record


def test_confluent_wire_format_layout(sample_events):
    value, _ = codec.encode("orders", sample_events["orders"], "confluent")
    magic, schema_id = struct.unpack(">bI", value[:5])
    assert (magic, schema_id) == (0, 3)


def test_json_takes_epoch_millis_and_iso_times_and_numeric_decimals(sample_events):
    order = sample_events["orders"]
    document = codec.to_json(order)
    document["event_time"] = int(order["event_time"].timestamp() * 1000)
    document["amount"] = float(order["amount"])
    document.pop("coupon")  # optional field: default applies
    decoded = codec.decode("orders", json.dumps(document).encode())
    assert decoded["event_time"] == order["event_time"]
    assert decoded["amount"] == order["amount"] and isinstance(decoded["amount"], Decimal)
    assert decoded["coupon"] is None


def _reason(topic, value, headers=None):
    with pytest.raises(DecodeError) as caught:
        codec.decode(topic, value, headers)
    return caught.value.reason


def test_each_bad_input_has_its_own_reason(sample_events):
    session = sample_events["web_sessions"]
    good, _ = codec.encode("web_sessions", session, "confluent")
    as_json = codec.to_json(session)
    assert _reason("web_sessions", b"") == "empty_value"
    assert _reason("web_sessions", b"\x00\x00\x00\x03\xe7" + good[5:]) == "unknown_schema_id"
    assert _reason("web_sessions", b"\x00\x01") == "bad_magic_byte"
    assert _reason("orders", good) == "wrong_topic_schema"
    assert _reason("web_sessions", good[: len(good) // 2]) == "truncated_avro"
    assert _reason("web_sessions", good + b"\x00\x00") == "trailing_bytes"
    assert _reason("web_sessions", b"{not json") == "invalid_json"
    assert _reason("web_sessions", b'{"a": "\xff"}') == "invalid_utf8"
    assert _reason("web_sessions", json.dumps({k: v for k, v in as_json.items() if k != "session_id"}).encode()) == "missing_field"
    assert _reason("web_sessions", json.dumps(dict(as_json, device="smart_fridge")).encode()) == "unknown_enum"
    assert _reason("web_sessions", json.dumps(dict(as_json, pageviews="seven")).encode()) == "wrong_type"
    assert _reason("web_sessions", json.dumps(dict(as_json, event_time="yesterday")).encode()) == "wrong_type"
    assert _reason("web_sessions", b"x", [("schema-version", b"9")]) == "unknown_schema_version"


def test_json_decimal_with_too_many_places_is_rejected(sample_events):
    document = dict(codec.to_json(sample_events["orders"]), amount="10.001")
    assert _reason("orders", json.dumps(document).encode()) == "wrong_type"


def test_timestamps_are_utc_and_millisecond_precise():
    decoded = codec.from_json({"type": "long", "logicalType": "timestamp-millis"}, "2026-09-01T12:00:00.123456+02:00")
    assert decoded == dt.datetime(2026, 9, 1, 10, 0, 0, 123000, tzinfo=dt.timezone.utc)
