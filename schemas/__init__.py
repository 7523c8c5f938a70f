"""Event contracts: the Avro schemas of the Kafka topics and their schema ids (schemas/topics/registry.json).

The .avsc files are the one source of truth for what each topic carries; everything else loads them from here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import fastavro

TOPICS_DIR = Path(__file__).parent / "topics"
TOPICS = ("social_interactions", "web_sessions", "orders")


@dataclass(frozen=True)
class TopicSchema:
    schema_id: int
    topic: str
    version: int
    definition: dict  # the .avsc as written
    parsed: dict  # fastavro's parsed form, for its readers and writers


@cache
def registry() -> dict[int, TopicSchema]:
    entries = json.loads((TOPICS_DIR / "registry.json").read_text())["schemas"]
    schemas = {}
    for entry in entries:
        definition = json.loads((TOPICS_DIR / entry["file"]).read_text())
        # Each version parses on its own: versions of one topic share type names.
        parsed = fastavro.parse_schema(definition, named_schemas={})
        schemas[entry["id"]] = TopicSchema(entry["id"], entry["topic"], entry["version"], definition, parsed)
    return schemas


def by_id(schema_id: int) -> TopicSchema:
    try:
        return registry()[schema_id]
    except KeyError:
        raise KeyError(f"unknown schema id {schema_id}") from None


@cache
def latest(topic: str) -> TopicSchema:
    versions = [s for s in registry().values() if s.topic == topic]
    if not versions:
        raise KeyError(f"no schema for topic {topic!r}; known: {', '.join(TOPICS)}")
    return max(versions, key=lambda s: s.version)


def version(topic: str, number: int) -> TopicSchema:
    for schema in registry().values():
        if schema.topic == topic and schema.version == number:
            return schema
    raise KeyError(f"topic {topic!r} has no schema version {number}")
