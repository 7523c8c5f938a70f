"""The bad-input corpus: one producer record per class of malformed input a topic may carry, each built from a
valid event and each with the dead-letter reason the pipeline must give it (a distinct reason per class).

Where the generator's `--malformed` knob mixes a few kinds into realistic traffic, this corpus names every class
once, for tests and for checking a deployment's dead-letter handling:

    from pipelines.generate.bad_inputs import bad_inputs
    for bad in bad_inputs(valid_order, valid_session): ...   # bad.record (a ProducerRecord), bad.reason
"""
from __future__ import annotations

import datetime as dt
import json
import struct
from dataclasses import dataclass
from decimal import Decimal

from pipelines.generate.records import ProducerRecord
from transforms import codec

JSON = [("content-type", codec.CONTENT_TYPES["json"])]
CONFLUENT = [("content-type", codec.CONTENT_TYPES["confluent"])]
OVERSIZED_BYTES = 600 * 1024  # above the decoder's 512 KiB limit, below the broker's 1 MiB


@dataclass(frozen=True)
class BadInput:
    name: str  # the class of malformed input
    reason: str  # the dead letter's reason
    stage: str  # decode (bytes → record) or validate (a record that breaks an event rule)
    record: ProducerRecord


def bad_inputs(order: dict, session: dict) -> list[BadInput]:
    """Every class, built from a valid `order` and a valid web `session` (records as the generator makes them)."""
    key = order["customer_id"].encode()
    confluent, _ = codec.encode("orders", order, "confluent")
    as_json = codec.to_json(order)

    def bad(name, reason, value, headers=CONFLUENT, stage="decode", topic="orders", record_key=key):
        return BadInput(name, reason, stage, ProducerRecord(topic, record_key, value, list(headers), None,
                                                            malformed=name))

    def order_as(**changes):
        return codec.encode("orders", dict(order, **changes), "confluent")[0]

    def json_without(field):
        return json.dumps({k: v for k, v in as_json.items() if k != field}).encode()

    session_value, _ = codec.encode("web_sessions", session, "confluent")
    session_key = session["anonymous_id"].encode()
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    from_epoch = codec.encode("web_sessions", dict(session, session_start=epoch), "confluent")[0]
    return [
        bad("truncated_avro", "truncated_avro", confluent[:-3]),
        bad("wrong_magic_byte", "bad_magic_byte", b"\x07" + confluent[1:]),
        bad("unknown_schema_id", "unknown_schema_id", struct.pack(">bI", 0, 9999) + confluent[5:]),
        bad("another_topics_schema", "wrong_topic_schema", session_value),
        bad("trailing_bytes", "trailing_bytes", confluent + b"\x00\x00"),
        bad("invalid_utf8", "invalid_utf8", json.dumps(as_json).encode().replace(b'"' + order["order_id"].encode(),
                                                                                 b'"\xff\xfe', 1), JSON),
        bad("not_json", "invalid_json", b'{"order_id": "o-1", ', JSON),
        bad("missing_required_field", "missing_field", json_without("order_id"), JSON),
        bad("wrong_type", "wrong_type", json.dumps(dict(as_json, amount=[1, 2])).encode(), JSON),
        bad("unknown_enum_value", "unknown_enum", json.dumps(dict(as_json, status="shipped_to_mars")).encode(), JSON),
        bad("empty_value", "empty_value", None),
        bad("oversized_message", "oversized_message",
            json.dumps(dict(as_json, coupon="x" * OVERSIZED_BYTES)).encode(), JSON),
        bad("negative_amount", "negative_amount", order_as(amount=-abs(order["amount"]) - Decimal("1.00")),
            stage="validate"),
        bad("unknown_currency", "unknown_currency", order_as(currency="XXX"), stage="validate"),
        bad("timestamp_in_year_9999", "event_time_out_of_range",
            order_as(event_time=dt.datetime(9999, 12, 31, tzinfo=dt.timezone.utc)), stage="validate"),
        bad("null_key", "null_key", confluent, stage="validate", record_key=None),
        # Each of these decoded once, and then stopped the job or every commit after it.
        bad("amount_beyond_precision", "decimal_out_of_range", order_as(amount=Decimal("1E+16"))),
        bad("json_nested_deeply", "json_too_deep", b'{"items": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON),
        bad("huge_identifier", "string_too_long", order_as(customer_id="c" * 400_000)),
        bad("control_characters_in_identifier", "hidden_characters", order_as(order_id="o-1\x00\x1b[2J\u202e")),
        bad("too_many_items", "array_too_long", order_as(items=[order["items"][0]] * 10_000)),
        bad("session_since_epoch", "session_too_long", from_epoch, stage="validate", topic="web_sessions",
            record_key=session_key),
    ]
