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


@pytest.mark.parametrize("amount", ["1e30", 1e308, "1e999999", "-1e26", "1" * 5000])
def test_a_json_amount_beyond_the_schemas_precision_is_a_decode_error_not_a_crash(sample_events, amount):
    document = dict(codec.to_json(sample_events["orders"]), amount=amount)
    assert _reason("orders", json.dumps(document).encode()) == "decimal_out_of_range"


def test_json_nested_deeper_than_the_parser_goes_is_a_decode_error(sample_events):
    assert _reason("orders", b'{"items": ' + b"[" * 100_000 + b"]" * 100_000 + b"}") == "json_too_deep"


@pytest.mark.parametrize("fmt", codec.FORMATS)
@pytest.mark.parametrize("amount", ["1E+16", "1E+40", "10000000000.00"])
def test_an_amount_beyond_the_schemas_precision_is_refused_in_every_format(sample_events, fmt, amount):
    order = dict(sample_events["orders"], amount=Decimal(amount))
    if fmt == "json":
        value, headers = json.dumps(dict(codec.to_json(order), amount=amount)).encode(), None
    else:  # fastavro writes 1E+16 (one digit, exponent 16) and reads it back rounded to the precision
        value, headers = codec.encode("orders", dict(order, amount=Decimal(amount).normalize()), fmt)
    assert _reason("orders", value, headers) == "decimal_out_of_range"
    largest = dict(order, amount=Decimal("9999999999.99"))
    assert codec.decode("orders", *codec.encode("orders", largest, fmt))["amount"] == Decimal("9999999999.99")


@pytest.mark.parametrize("fmt", codec.FORMATS)
def test_each_field_is_held_to_the_limits_its_schema_declares(sample_events, fmt):
    order, session = sample_events["orders"], sample_events["web_sessions"]
    reason = lambda topic, record: _reason(topic, *codec.encode(topic, record, fmt))
    assert reason("orders", dict(order, customer_id="c" * 400_000)) == "string_too_long"
    assert reason("orders", dict(order, customer_id="c" * 129)) == "string_too_long"  # maxLength 128
    assert reason("web_sessions", dict(session, referrer="https://x/" + "a" * 3000)) == "string_too_long"  # default
    assert reason("orders", dict(order, items=[order["items"][0]] * 501)) == "array_too_long"  # maxItems 500
    item = dict(order["items"][0], sku="s\u202ekcab")
    assert reason("orders", dict(order, items=[item])) == "hidden_characters"  # inside an array's records
    for hidden in ("\x00", "\x1b[2J", "\u202e", "\u200b", "\ufeff"):
        assert reason("orders", dict(order, order_id=f"o-1{hidden}")) == "hidden_characters"
        assert reason("web_sessions", dict(session, utm_campaign=f"spring{hidden}")) == "hidden_characters"
    # At their limits, and with the characters campaign names do carry, records decode.
    fine = dict(order, customer_id="c" * 128, items=[order["items"][0]] * 500, coupon="Spring 🎉 – 20 % €")
    assert codec.decode("orders", *codec.encode("orders", fine, fmt)) == fine
