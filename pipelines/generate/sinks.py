"""Where generated records go: a Kafka cluster (optionally at a fixed rate), or Avro container files."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import fastavro

import schemas
from pipelines.generate.records import ProducerRecord
from transforms.kafka_connection import KafkaConnection

MALFORMED_FILE_SCHEMA = fastavro.parse_schema({
    "type": "record", "name": "MalformedRecord", "namespace": "customer_journeys.generator",
    "doc": "A record the generator made malformed on purpose, as the bytes a producer would have sent.",
    "fields": [{"name": "topic", "type": "string"}, {"name": "kind", "type": "string"},
               {"name": "key", "type": ["null", "bytes"]}, {"name": "value", "type": "bytes"}],
})


@dataclass
class SendStats:
    records: int = 0
    seconds: float = 0.0
    by_topic: Counter = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


def produce(records: list[ProducerRecord], connection: KafkaConnection, *, topic_prefix: str = "",
            rate: float | None = None) -> SendStats:
    """Send `records` in order and wait until the broker has acknowledged every one (acks=all).

    With `rate` (records/s) the sends are paced evenly, as a live producer fleet would send them.
    """
    producer = connection.producer(acks="all", enable_idempotence=True, linger_ms=20, batch_size=256 * 1024, max_request_size=2 * 1024 * 1024)
    failures: list[Exception] = []
    stats = SendStats()
    started = time.monotonic()
    try:
        for sent, record in enumerate(records):
            if rate:
                ahead = started + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            producer.send(topic_prefix + record.topic, key=record.key, value=record.value,
                          headers=record.headers).add_errback(failures.append)
            stats.by_topic[record.topic] += 1
        producer.flush()
    finally:
        producer.close()
    stats.records = len(records)
    stats.seconds = time.monotonic() - started
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(records)} records were not acknowledged; first: {failures[0]!r}")
    return stats


def write_avro_files(records: list[ProducerRecord], out_dir: Path) -> SendStats:
    """One container file per topic with its events, plus malformed.avro with the raw bad records."""
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = SendStats()
    for topic in schemas.TOPICS:
        events = [r.event for r in records if r.topic == topic and r.event is not None]
        with open(out_dir / f"{topic}.avro", "wb") as out:
            fastavro.writer(out, schemas.latest(topic).parsed, events, codec="deflate")
        stats.by_topic[topic] = len(events)
    bad = [{"topic": r.topic, "kind": r.malformed, "key": r.key, "value": r.value} for r in records if r.malformed]
    with open(out_dir / "malformed.avro", "wb") as out:
        fastavro.writer(out, MALFORMED_FILE_SCHEMA, bad)
    stats.by_topic["malformed"] = len(bad)
    stats.records = len(records)
    stats.seconds = time.monotonic() - started
    return stats
