"""Event contracts: the Avro schemas of the Kafka topics and their schema ids (schemas/topics/registry.json).

The .avsc files are the one source of truth for what each topic carries; everything else loads them from here.
"""
from __future__ import annotations

import json
import os
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


# Schema versions registered after this build: a folder laid out as schemas/topics/ (registry.json and the .avsc
# files it names). They serve as writer schemas only; records are still read into this build's latest version, so
# a compatible change (say, a new optional field) decodes and an incompatible one is dead-lettered.
REGISTERED_DIR_ENV = "JOURNEYS_SCHEMA_DIR"
_registered: dict[int, TopicSchema] = {}


def _load(directory: Path) -> dict[int, TopicSchema]:
    entries = json.loads((directory / "registry.json").read_text())["schemas"]
    schemas = {}
    for entry in entries:
        definition = json.loads((directory / entry["file"]).read_text())
        # Each version parses on its own: versions of one topic share type names.
        parsed = fastavro.parse_schema(definition, named_schemas={})
        schemas[entry["id"]] = TopicSchema(entry["id"], entry["topic"], entry["version"], definition, parsed)
    return schemas


@cache
def registry() -> dict[int, TopicSchema]:
    """The schema versions this build ships (schemas/topics/)."""
    return _load(TOPICS_DIR)


def _registered_since_build() -> dict[int, TopicSchema]:
    """Re-read on every miss, as a client asks its schema registry for an id it has not seen: a version registered
    while a job runs is found by its first record."""
    directory = os.environ.get(REGISTERED_DIR_ENV)
    if not directory or not (Path(directory) / "registry.json").exists():
        return {}
    found = _load(Path(directory))
    clashes = [schema_id for schema_id, schema in found.items()
               if schema_id in registry() and registry()[schema_id].definition != schema.definition]
    if clashes:
        raise ValueError(f"{directory}: schema ids {clashes} are taken by this build's schemas")
    _registered.update(found)
    return _registered


def _find(match) -> TopicSchema | None:
    known = next((schema for schema in (*registry().values(), *_registered.values()) if match(schema)), None)
    return known or next((schema for schema in _registered_since_build().values() if match(schema)), None)


def by_id(schema_id: int) -> TopicSchema:
    found = registry().get(schema_id) or _registered.get(schema_id) or _registered_since_build().get(schema_id)
    if found is None:
        raise KeyError(f"unknown schema id {schema_id}")
    return found


@cache
def latest(topic: str) -> TopicSchema:
    versions = [s for s in registry().values() if s.topic == topic]
    if not versions:
        raise KeyError(f"no schema for topic {topic!r}; known: {', '.join(TOPICS)}")
    return max(versions, key=lambda s: s.version)


def version(topic: str, number: int) -> TopicSchema:
    found = _find(lambda schema: schema.topic == topic and schema.version == number)
    if found is None:
        raise KeyError(f"topic {topic!r} has no schema version {number}")
    return found
