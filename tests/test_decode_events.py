"""DecodeEvents: every message becomes exactly one record of its topic or one dead letter."""
import datetime as dt

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms import codec
from transforms.decode_events import DEAD_LETTERS, DeadLetter, DecodeEvents, EventDecoder
from transforms.failed_events import COORDINATES
from transforms.kafka_message import KafkaMessage

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
# The DirectRunner's own engine, named so that it does not first try (and fail) to download Prism.
UNIT_RUNNER = "FnApiRunner"


def _message(topic, value, headers=(), offset=0):
    return KafkaMessage(topic, 1, offset, 1_760_000_000_000, b"key", value, tuple(headers))


def test_decoder_names_stage_and_reason_and_keeps_the_raw_bytes(sample_events):
    decoder = EventDecoder.for_prefix("p.")
    order = sample_events["orders"]
    value, headers = codec.encode("orders", order, "avro")
    # the record, with where it came from (for a step that fails on it: transforms/failed_events.py)
    assert decoder(_message("p.orders", value, headers), NOW) == {**order, COORDINATES: (decoder.kafka_topics.index("p.orders"), 1, 0)}

    dead = decoder(_message("p.orders", value[:7], headers, offset=42), NOW)
    assert isinstance(dead, DeadLetter)
    assert (dead.stage, dead.reason, dead.offset, dead.value, dead.key) == ("decode", "truncated_avro", 42, value[:7], b"key")
    negative = codec.encode("orders", dict(order, amount=-order["amount"] - 1))[0]
    assert decoder(_message("p.orders", negative), NOW).stage == "validate"
    assert decoder(_message("elsewhere", value), NOW).reason == "unknown_topic"


def test_decode_events_routes_records_by_topic_and_failures_to_dead_letters(sample_events):
    decoder = EventDecoder.for_prefix("")
    session, social = sample_events["web_sessions"], sample_events["social_interactions"]
    messages = [
        _message("web_sessions", *codec.encode("web_sessions", session, "confluent")),
        _message("social_interactions", *codec.encode("social_interactions", social, "json")),
        _message("orders", b"\xff\xfe garbage", offset=7),
        _message("web_sessions", codec.encode("orders", sample_events["orders"])[0], offset=8),
    ]
    with TestPipeline(runner=UNIT_RUNNER) as pipeline:
        outputs = pipeline | beam.Create(messages) | DecodeEvents(decoder)
        assert_that(outputs["web_sessions"], equal_to([{**session, COORDINATES: (decoder.kafka_topics.index("web_sessions"), 1, 0)}]),
                    label="sessions")
        assert_that(outputs["social_interactions"], equal_to([{**social, COORDINATES: (decoder.kafka_topics.index("social_interactions"), 1, 0)}]),
                    label="social")
        assert_that(outputs["orders"], equal_to([]), label="orders")
        reasons = outputs[DEAD_LETTERS] | beam.Map(lambda d: (d.topic, d.offset, d.stage, d.reason))
        assert_that(reasons, equal_to([("orders", 7, "decode", "truncated_avro"),
                                       ("web_sessions", 8, "decode", "wrong_topic_schema")]), label="dead")


def test_a_message_decoded_by_the_source_is_not_decoded_again(sample_events):
    decoder = EventDecoder.for_prefix("")
    already = _message("orders", b"not even bytes of an order")
    already.decoded = sample_events["orders"]
    with TestPipeline(runner=UNIT_RUNNER) as pipeline:
        outputs = pipeline | beam.Create([already]) | DecodeEvents(decoder)
        assert_that(outputs["orders"], equal_to([sample_events["orders"]]))


def test_every_class_of_the_bad_input_corpus_is_dead_lettered_with_its_own_reason(sample_events):
    from pipelines.generate.bad_inputs import bad_inputs

    decoder = EventDecoder.for_prefix("")
    corpus = bad_inputs(sample_events["orders"], sample_events["web_sessions"])
    assert len(corpus) >= 10 and len({bad.reason for bad in corpus}) == len(corpus)
    for offset, bad in enumerate(corpus):
        message = KafkaMessage(bad.record.topic, 0, offset, 1_760_000_000_000, bad.record.key, bad.record.value,
                               tuple(bad.record.headers))
        dead = decoder(message, NOW)
        assert isinstance(dead, DeadLetter), bad.name
        assert (dead.reason, dead.stage) == (bad.reason, bad.stage), (bad.name, dead.error)
        assert (dead.value, dead.key, dead.offset) == (bad.record.value, bad.record.key, offset)
    # Each built from a valid event: the same record with a key and its own bytes decodes.
    valid = codec.encode("orders", sample_events["orders"])
    assert decoder(_message("orders", *valid), NOW) == {**sample_events["orders"], COORDINATES: (decoder.kafka_topics.index("orders"), 1, 0)}


def test_whatever_the_decoder_or_a_rule_raises_becomes_a_dead_letter(sample_events, monkeypatch):
    decoder = EventDecoder.for_prefix("")
    value, headers = codec.encode("orders", sample_events["orders"])

    def broken(*_):
        raise RecursionError("maximum recursion depth exceeded " + "x" * 10_000)
    monkeypatch.setattr(codec, "decode", broken)
    dead = decoder(_message("orders", value, headers, offset=5), NOW)
    assert (dead.stage, dead.reason, dead.offset, dead.value) == ("decode", "decoder_error", 5, value)
    assert dead.error.startswith("RecursionError: maximum recursion") and len(dead.error) < 600
    monkeypatch.undo()

    class BrokenRules:
        def check(self, *_):
            raise KeyError("event_time")
    dead = EventDecoder(decoder.logical_topics, BrokenRules())(_message("orders", value, headers), NOW)
    assert (dead.stage, dead.reason, dead.error) == ("validate", "rule_error", "KeyError: 'event_time'")


def test_the_decoder_pseudonymises_the_fields_the_schemas_mark_and_never_carries_the_key(sample_events, tmp_path):
    import pickle

    from transforms.pseudonymise import Pseudonymiser, personal_fields, pseudonym
    from transforms.secret import Secret

    (tmp_path / "key").write_text("a-key-nobody-guesses\n")
    decoder = EventDecoder.for_prefix("", pseudonyms=Pseudonymiser(Secret(file=str(tmp_path / "key"))))
    assert personal_fields("web_sessions") == ("anonymous_id", "customer_id")
    assert personal_fields("social_interactions") == ("customer_id", "handle_pseudonym")
    for topic, record in sample_events.items():
        decoded = decoder(_message(topic, *codec.encode(topic, record)), NOW)
        assert decoded[COORDINATES] == (decoder.kafka_topics.index(topic), 1, 0)
        for name, value in record.items():
            if name in personal_fields(topic) and value is not None:
                assert decoded[name] == pseudonym(value, b"a-key-nobody-guesses") != value, (topic, name)
            else:
                assert decoded[name] == value, (topic, name)
    shipped = pickle.dumps(decoder)
    assert b"a-key-nobody-guesses" not in shipped and "a-key-nobody-guesses" not in repr(decoder)
    assert pickle.loads(shipped)(_message("orders", *codec.encode("orders", sample_events["orders"])), NOW) == \
        decoder(_message("orders", *codec.encode("orders", sample_events["orders"])), NOW)
