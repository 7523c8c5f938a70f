"""Simulated events → the Kafka records a real producer fleet would send: encoded, a few out of order or
late, and (on request) interleaved with malformed records of known kinds, so tests can reconcile
records in = decoded + dead-lettered.
"""
from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from dataclasses import dataclass
from decimal import Decimal

from pipelines.generate.simulate import Event
from transforms import codec

FORMAT_CHOICES = codec.FORMATS + ("mixed",)
MIXED_FORMAT_WEIGHTS = {"confluent": 0.7, "avro": 0.15, "json": 0.15}

# Each kind of malformed record and the decode reasons it may end in.
MALFORMED_KINDS = {
    "bad_bytes": {"invalid_avro", "truncated_avro", "trailing_bytes", "invalid_utf8"},
    "truncated": {"truncated_avro", "invalid_avro", "invalid_utf8"},
    "wrong_schema": {"wrong_topic_schema"},
    "missing_field": {"missing_field"},
    "unknown_enum": {"unknown_enum"},
    "negative_amount": {"negative_amount"},
    "far_future": {"event_time_out_of_range"},
}
# A record sent again by an at-least-once producer (a retry): same key, same bytes, a few records later.
DUPLICATE = "duplicate"
DEAD_LETTER_REASONS = {**MALFORMED_KINDS, DUPLICATE: {"duplicate_event"}}  # what each kind of bad record ends as
_UNKNOWN_ENUMS = {"social_interactions": ("platform", "myspace"), "web_sessions": ("device", "smart_fridge"),
                  "orders": ("status", "shipped_to_mars")}
_REQUIRED = {"social_interactions": "platform", "web_sessions": "session_id", "orders": "order_id"}


@dataclass(frozen=True)
class ProducerRecord:
    topic: str  # logical topic (schemas.TOPICS); the Kafka topic name may carry a prefix
    key: bytes | None
    value: bytes
    headers: list
    event: dict | None  # what a correct decode yields; None for malformed records
    malformed: str | None = None  # the MALFORMED_KINDS key
    delay: dt.timedelta = dt.timedelta(0)  # how far behind its event time it was sent (late / out of order)


def to_records(events: list[Event], *, seed: int, fmt: str = "confluent", out_of_order: float = 0.0,
               late: float = 0.0, malformed: float = 0.0, duplicates: float = 0.0) -> list[ProducerRecord]:
    """Encode `events` in send order; `malformed` adds that fraction of bad records on top of the good ones, and
    `duplicates` that fraction of events sent again (kind DUPLICATE, no event: the pipeline must count them once)."""
    if fmt not in FORMAT_CHOICES:
        raise ValueError(f"format {fmt!r}: one of {', '.join(FORMAT_CHOICES)}")
    rng = random.Random(f"{seed}:records")
    records = []
    for event in events:
        chosen = fmt if fmt != "mixed" else rng.choices(list(MIXED_FORMAT_WEIGHTS), list(MIXED_FORMAT_WEIGHTS.values()))[0]
        value, headers = codec.encode(event.topic, event.record, chosen)
        roll = rng.random()
        if roll < late:
            delay = dt.timedelta(hours=rng.uniform(2, 48))
        elif roll < late + out_of_order:
            delay = dt.timedelta(seconds=rng.uniform(1, 600))
        else:
            delay = dt.timedelta(0)
        records.append(ProducerRecord(event.topic, event.key.encode(), value, headers, event.record, delay=delay))
    # Send order: event time plus the delay (a stable sort keeps simultaneous events as they were).
    records.sort(key=lambda r: r.event["event_time"] + r.delay)
    if duplicates > 0 and records:
        drng = random.Random(f"{seed}:duplicates")
        again = {drng.randrange(len(records)) for _ in range(round(duplicates * len(records)))}
        sent = []
        for position, record in enumerate(records):
            sent.append(record)
            if position in again:  # the retry lands 0-19 records after the original (inserted after them below)
                sent.append((drng.randrange(20), record))
        records = _place_retries(sent)
    if malformed > 0 and events:
        by_topic = {topic: [e for e in events if e.topic == topic] for topic in {e.topic for e in events}}
        bad = [_malformed(rng, events, by_topic) for _ in range(round(malformed * len(events)))]
        # Spread over the send order: positions drawn first, then one merge instead of a list.insert each.
        slots = sorted((rng.randrange(len(records) + 1), n) for n in range(len(bad)))
        merged, taken = [], 0
        for position, n in slots:
            merged.extend(records[taken:position])
            merged.append(bad[n])
            taken = position
        records = merged + records[taken:]
    return records


def _place_retries(sent: list) -> list[ProducerRecord]:
    """Records, with each (gap, record) retry placed `gap` records after where it stands, as a copy of the record."""
    out: list[ProducerRecord] = []
    waiting: list = []  # [records still to pass, retry]
    for item in sent:
        if isinstance(item, tuple):
            waiting.append([item[0], item[1]])
            continue
        out.append(item)
        for entry in waiting:
            entry[0] -= 1
        out.extend(_retry(r) for gap, r in waiting if gap < 0)
        waiting = [entry for entry in waiting if entry[0] >= 0]
    return out + [_retry(r) for _, r in waiting]


def _retry(record: ProducerRecord) -> ProducerRecord:
    return ProducerRecord(record.topic, record.key, record.value, record.headers, None, malformed=DUPLICATE,
                          delay=record.delay)


def _malformed(rng: random.Random, events: list[Event], by_topic: dict[str, list[Event]]) -> ProducerRecord:
    kind = rng.choice(list(MALFORMED_KINDS))
    template = rng.choice(by_topic.get("orders") or events) if kind == "negative_amount" else rng.choice(events)
    topic, key = template.topic, template.key.encode()
    record = dict(template.record, event_id=str(_uuid(rng)))
    if kind == "bad_bytes":
        # 0xff starts a huge varint length: no reader mistakes this for a record.
        value, headers, key = b"\xff\xfe" + rng.randbytes(rng.randrange(8, 200)), [], None
    elif kind == "truncated":
        value, headers = codec.encode(topic, record, "confluent")
        value = value[:len(value) // 2]
    elif kind == "wrong_schema":
        other = rng.choice([e for t, es in by_topic.items() if t != topic for e in es[:50]] or events)
        value, headers = codec.encode(other.topic, other.record, "confluent")
    elif kind in ("missing_field", "unknown_enum"):
        document = codec.to_json(record)
        if kind == "missing_field":
            del document[_REQUIRED[topic]]
        else:
            field, bogus = _UNKNOWN_ENUMS[topic]
            document[field] = bogus
        value, headers = json.dumps(document).encode(), [("content-type", codec.CONTENT_TYPES["json"])]
    elif kind == "negative_amount":
        value, headers = codec.encode(topic, dict(record, amount=-abs(record["amount"]) - Decimal("1.00")), "confluent")
    else:  # far_future
        value, headers = codec.encode(topic, dict(record, event_time=dt.datetime(9999, 12, 31, tzinfo=dt.timezone.utc)))
    return ProducerRecord(topic, key, value, headers, None, malformed=kind)


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)
