"""`journeys generate`: seeded synthetic journeys with planted ground truth, as Kafka records or Avro files."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import fields

from pipelines.generate.records import ProducerRecord, to_records
from pipelines.generate.simulate import Event, GeneratorConfig, PlantedTruth, simulate

__all__ = ["Event", "GeneratorConfig", "PlantedTruth", "ProducerRecord", "generate", "simulate", "to_records",
           "manifest", "records_by_topic"]


def generate(config: GeneratorConfig, pseudonym_key: bytes, *, fmt: str = "confluent", out_of_order: float = 0.0,
             late: float = 0.0, malformed: float = 0.0, duplicates: float = 0.0) -> list[ProducerRecord]:
    """The records to send, in send order: deterministic for the same config, key and knobs."""
    events = simulate(config, pseudonym_key)
    return to_records(events, seed=config.seed, fmt=fmt, out_of_order=out_of_order, late=late, malformed=malformed,
                      duplicates=duplicates)


def records_by_topic(config: GeneratorConfig, pseudonym_key: bytes) -> dict[str, list[dict]]:
    """The simulated events as decoded records per topic: what a pipeline stage sees after decoding."""
    by_topic = defaultdict(list)
    for event in simulate(config, pseudonym_key):
        by_topic[event.topic].append(event.record)
    return dict(by_topic)


def manifest(config: GeneratorConfig, records: list[ProducerRecord]) -> dict:
    """What was generated and what was planted, for tests and for reconciling counts downstream."""
    return {
        "seed": config.seed, "customers": config.customers, "days": config.days, "start": config.start.isoformat(),
        "records": len(records),
        "events_by_topic": dict(Counter(r.topic for r in records if r.event is not None)),
        "malformed_by_kind": dict(Counter(r.malformed for r in records if r.malformed)),
        "malformed_by_topic": dict(Counter(r.topic for r in records if r.malformed)),
        "late": sum(1 for r in records if r.delay.total_seconds() >= 3600),
        "out_of_order": sum(1 for r in records if 0 < r.delay.total_seconds() < 3600),
        "planted": _plain({f.name: getattr(config.truth, f.name) for f in fields(config.truth)}),
    }


def _plain(value):
    """Mappings (frozen ones too) as JSON-ready dicts with string keys."""
    if hasattr(value, "items"):
        return {str(k).lower(): _plain(v) for k, v in value.items()}
    return value
