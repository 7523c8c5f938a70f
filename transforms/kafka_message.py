"""One Kafka record as the pipeline carries it: coordinates, raw bytes, and (when the source decoded it to read
its event time) the decoded outcome, so nothing downstream decodes it a second time."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class KafkaMessage:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple  # ((name, bytes), ...)
    decoded: Any = None  # a record dict or a DeadLetter, when the source decoded it
