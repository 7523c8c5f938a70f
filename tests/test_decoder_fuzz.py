"""The decoder on random and mutated input: a valid record or a dead letter, never an exception, in bounded time and
memory (property-based: hypothesis draws the bytes and the mutations)."""
import json
import time
import tracemalloc

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from transforms import codec
from transforms.decode_events import DeadLetter, EventDecoder
from transforms.kafka_message import KafkaMessage
from tests.test_decode_events import NOW

DECODER = EventDecoder.for_prefix("")
HEADERS = st.sampled_from([(), *((("content-type", ct),) for ct in codec.CONTENT_TYPES.values()),
                           (("content-type", codec.CONTENT_TYPES["avro"]), ("schema-version", b"1")),
                           (("schema-version", b"x"),)])
# Each example must decode or fail quickly and without holding much more than its bytes.
MOST_SECONDS, MOST_BYTES = 0.5, 32 * 1024 * 1024
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
                           lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                                      max_size=5), max_leaves=20)


def _outcome(topic: str, value: bytes, headers=()):
    """The decoder's outcome, checked to be a dead letter or a record its schema would write back."""
    message = KafkaMessage(topic, 0, 7, 1_760_000_000_000, b"key", value, tuple(headers))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        outcome = DECODER(message, NOW)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - started < MOST_SECONDS
    assert peak < MOST_BYTES + 4 * len(value)
    if isinstance(outcome, DeadLetter):
        assert (outcome.value, outcome.offset) == (value, 7)
        assert outcome.stage in ("decode", "validate") and outcome.reason and outcome.error
    else:
        assert isinstance(outcome, dict)
        assert fastavro.validation.validate(outcome, schemas.latest(topic).parsed, raise_errors=False)
    return outcome


@FUZZ
@given(topic=st.sampled_from(schemas.TOPICS), value=st.binary(max_size=300), headers=HEADERS)
def test_random_bytes_are_a_record_or_a_dead_letter(topic, value, headers):
    _outcome(topic, value, headers)


@FUZZ
@given(topic=st.sampled_from(schemas.TOPICS), fmt=st.sampled_from(codec.FORMATS), data=st.data())
def test_a_valid_record_with_bytes_changed_is_a_record_or_a_dead_letter(sample_events, topic, fmt, data):
    value, headers = codec.encode(topic, sample_events[topic], fmt)
    value = bytearray(value)
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, len(value)))
        change = data.draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if change == "flip" and where < len(value):
            value[where] = data.draw(st.integers(0, 255))
        elif change == "insert":
            value[where:where] = data.draw(st.binary(min_size=1, max_size=9))
        elif change == "delete":
            del value[where:where + data.draw(st.integers(1, 9))]
        else:
            del value[where:]
    _outcome(topic, bytes(value), headers)


@FUZZ
@given(topic=st.sampled_from(schemas.TOPICS), data=st.data())
def test_a_valid_json_record_with_a_field_replaced_is_a_record_or_a_dead_letter(sample_events, topic, data):
    document = codec.to_json(sample_events[topic])
    field = data.draw(st.sampled_from(sorted(document)))
    document[field] = data.draw(JSON_VALUES | st.sampled_from(
        ["1e30", 1e308, "1e999999", "NaN", "-0", "9" * 400, "\x00", "\u202e", "1970-01-01T00:00:00Z", 2**80]))
    _outcome(topic, json.dumps(document).encode(), [("content-type", codec.CONTENT_TYPES["json"])])


@pytest.mark.parametrize("value", [b'{"items": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                   b"[" * 500_000, b'{"amount": "' + b"9" * 400_000 + b'"}',
                                   b"\x00\x00\x00\x00\x03" + b"\xff" * 64])
def test_pathological_inputs_end_in_bounded_time_and_memory(value):
    assert isinstance(_outcome("orders", value), DeadLetter)
