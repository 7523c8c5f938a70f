"""Kafka messages → typed event records per topic, and dead letters for everything that is not one.

`decode_message` is the pure function (bytes → record or dead letter, never an exception); `DecodeEvents` is the
PTransform: one tagged output per event topic plus `dead_letters`, so records in = records out + dead letters.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import apache_beam as beam

import schemas
from transforms import codec
from transforms.event_rules import EventRules
from transforms.failed_events import COORDINATES, bounded, described
from transforms.kafka_message import KafkaMessage
from transforms.pseudonymise import Pseudonymiser

DEAD_LETTERS = "dead_letters"


@dataclass(frozen=True)
class DeadLetter:
    """A message that did not become an event: its raw bytes, where it came from, and why."""
    topic: str
    partition: int
    offset: int
    kafka_timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple
    stage: str  # "decode" (bytes → record), "validate" (record breaks an event rule) or "dedupe" (read before)
    reason: str
    error: str
    first_seen: dt.datetime

    def row(self) -> dict:
        """As a row of the dead_letters table (schemas/tables/dead_letters.json)."""
        when = (dt.datetime.fromtimestamp(self.kafka_timestamp_ms / 1000, dt.timezone.utc)
                if self.kafka_timestamp_ms is not None else None)
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset, "kafka_timestamp": when,
                "key": self.key, "value": self.value, "stage": self.stage, "reason": self.reason,
                "error": self.error, "first_seen": self.first_seen}


@dataclass(frozen=True)
class EventDecoder:
    """Which Kafka topic carries which event topic, and the rules a record must meet."""
    logical_topics: tuple[tuple[str, str], ...]  # (kafka topic, schemas topic)
    rules: EventRules = field(default_factory=EventRules)
    # Our events are well under a kilobyte: a value this large is a producer's mistake, not an event to hold in
    # memory and state. (The broker's own limit, 1 MiB by default, is higher.)
    max_value_bytes: int = 512 * 1024
    # Replaces the fields that identify a person by keyed pseudonyms (transforms/pseudonymise.py); None: as they
    # come (unit tests; every pipeline command gives one)
    pseudonyms: Pseudonymiser | None = None

    def __post_init__(self):
        # per message: the event topic and the Kafka topic's index, which a decoded record's coordinates carry
        object.__setattr__(self, "_topics", {kafka: (index, logical)
                                             for index, (kafka, logical) in enumerate(self.logical_topics)})

    @property
    def kafka_topics(self) -> tuple[str, ...]:
        """The Kafka topics by the index a record's coordinates give (failed_events.FailedEvent.row)."""
        return tuple(kafka for kafka, _ in self.logical_topics)

    @classmethod
    def for_prefix(cls, prefix: str = "", rules: EventRules | None = None,
                   pseudonyms: Pseudonymiser | None = None) -> "EventDecoder":
        return cls(tuple((prefix + t, t) for t in schemas.TOPICS), rules or EventRules(), pseudonyms=pseudonyms)

    def logical_topic(self, kafka_topic: str) -> str | None:
        return self._topics.get(kafka_topic, (None, None))[1]

    def __call__(self, message: KafkaMessage, now: dt.datetime | None = None) -> dict | DeadLetter:
        now = now or dt.datetime.now(dt.timezone.utc)
        topic_index, topic = self._topics.get(message.topic, (None, None))
        if topic is None:
            return _dead(message, "decode", "unknown_topic", f"no event schema for Kafka topic {message.topic}", now)
        if message.value is not None and len(message.value) > self.max_value_bytes:
            return _dead(message, "decode", "oversized_message",
                         f"{len(message.value):,} bytes, more than {self.max_value_bytes:,}", now)
        try:
            record = codec.decode(topic, message.value, list(message.headers))
        except codec.DecodeError as error:
            return _dead(message, "decode", error.reason, error.detail, now)
        except Exception as error:  # noqa: BLE001 — a record the decoder cannot handle must not stop the job
            return _dead(message, "decode", "decoder_error", described(error), now)
        try:
            self.rules.check(topic, record, now)
        except codec.DecodeError as error:
            return _dead(message, "validate", error.reason, error.detail, now)
        except Exception as error:  # noqa: BLE001
            return _dead(message, "validate", "rule_error", described(error), now)
        if message.key is None:  # every topic is keyed by customer or visitor: without one, ordering is lost
            return _dead(message, "validate", "null_key", "the message has no key (customer or anonymous id)", now)
        if self.pseudonyms is not None:
            record = self.pseudonyms.record(topic, record)
        # where it came from, for a step that fails on it (transforms/failed_events.py); the record is the
        # decoder's own. The topic as its index: every step a record's touch or order crosses carries these.
        record[COORDINATES] = (topic_index, message.partition, message.offset)
        return record

    def outcome(self, message: KafkaMessage) -> dict | DeadLetter:
        """The message's record or dead letter; the source may have decoded it already (to timestamp it by
        event time), and then it is not decoded twice."""
        return message.decoded if message.decoded is not None else self(message)


def duplicate(message: KafkaMessage, event_id: str) -> DeadLetter:
    """A message whose event was read before (transforms/dedupe.py): a dead letter, so that it counts once and
    records in = landed + dead-lettered still holds."""
    return _dead(message, "dedupe", "duplicate_event", f"event {event_id} was delivered before on this partition",
                 dt.datetime.now(dt.timezone.utc))


def _dead(message: KafkaMessage, stage: str, reason: str, error: str, now: dt.datetime) -> DeadLetter:
    return DeadLetter(message.topic, message.partition, message.offset, message.timestamp_ms, message.key,
                      message.value, message.headers, stage, reason, bounded(error), now)


class _Route(beam.DoFn):
    def __init__(self, decoder: EventDecoder):
        self.decoder = decoder

    def process(self, message: KafkaMessage):
        outcome = self.decoder.outcome(message)
        if isinstance(outcome, DeadLetter):
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, outcome)
        else:
            yield beam.pvalue.TaggedOutput(self.decoder.logical_topic(message.topic), outcome)


class DecodeEvents(beam.PTransform):
    """KafkaMessages → {topic: PCollection of records, ..., "dead_letters": PCollection of DeadLetter}."""

    def __init__(self, decoder: EventDecoder):
        super().__init__()
        self.decoder = decoder

    def expand(self, messages):
        topics = sorted({t for _, t in self.decoder.logical_topics})
        routed = messages | "Route" >> beam.ParDo(_Route(self.decoder)).with_outputs(*topics, DEAD_LETTERS)
        return {name: routed[name] for name in (*topics, DEAD_LETTERS)}
