"""An event that a step of the journeys failed on: held back from that step, and kept as a dead letter (stage
"journeys") with where it came from, while the pipeline goes on.

The decoder lets through only records that meet the event rules, so a step that still fails on one has a bug or
meets a case nobody foresaw. Unguarded, the exception fails the job, and since a restart reads the same record
again, the job never gets past it. So the steps that read events (routing sessions, stitching, attribution) run
`quarantined`: an element whose processing raises gives no output at all (its outputs are held until it has
succeeded), the exception becomes a FailedEvent on the FAILED output, and the step goes on with the next element.
In a stream the step's state stays as it was before that element (a step writes its state last); in a backfill's
in-memory replay it keeps what the element changed before it failed.

A decoded record carries its Kafka coordinates under COORDINATES; the steps pass them along with each element they
derive from it (not into their state), so a FailedEvent names the message to replay once the step is fixed.
"""
from __future__ import annotations

import datetime as dt
import functools
import json
import zlib
from dataclasses import dataclass

import apache_beam as beam

# A decoded record's (Kafka topic's index in its EventDecoder, partition, offset); absent from records made in memory.
# Three small integers: a touch or an order carries them across every grouping, where a topic's name would add
# some thirty bytes to each.
COORDINATES = "_coordinates"
FAILED = "failed_events"  # the tagged output of a quarantined step
# A dead letter keeps the raw bytes or the event; its error only says what broke, in a line a reader can take in.
MAX_ERROR_CHARACTERS = 500


@dataclass(frozen=True)
class FailedEvent:
    step: str
    coordinates: tuple | None  # (Kafka topic's index, partition, offset), or None: a timer's, or an element made in memory
    key: str | None  # the step's key (a customer or device, as pseudonymised), if it is keyed
    element: str  # what the step was given, as JSON
    error: str
    first_seen: dt.datetime

    def row(self, kafka_topics: tuple[str, ...]) -> dict:
        """As a row of the dead_letters table: the event's coordinates (its topic named from `kafka_topics`, the
        decoder's), the step and its error; the element (as the step had it, personal ids pseudonymised) in place of
        the raw value, which the coordinates find. A timer's failure has no event of its own: it lands under the
        step's name, partition -1, at an offset made from its key."""
        if self.coordinates:
            index, partition, offset = self.coordinates
            topic = kafka_topics[index] if 0 <= index < len(kafka_topics) else f"topic #{index}"
        else:
            topic, partition, offset = f"journeys:{self.step}", -1, zlib.crc32(f"{self.key}".encode())
        return {"topic": topic, "partition": partition, "offset": offset, "kafka_timestamp": None, "key": None,
                "value": self.element.encode(), "stage": "journeys", "reason": "step_failed",
                "error": f"{self.step}: {self.error}", "first_seen": self.first_seen}


def quarantined(step: str, coordinates=None, key=None):
    """Decorates a DoFn method (process, or a timer callback) so that an element it fails on becomes a FailedEvent
    on FAILED: coordinates(args, kwargs) and key(args, kwargs) say where the element came from and its key. The
    method's signature stays (Beam reads its state and timer parameters from it)."""
    def decorate(method):
        @functools.wraps(method)
        def guarded(self, *args, **kwargs):
            try:
                outputs = list(method(self, *args, **kwargs) or ())  # all of an element's outputs, or none
            except Exception as error:  # noqa: BLE001 - one element must not stop the job; kept with its cause
                element = args[0] if args else "(timer)"
                yield beam.pvalue.TaggedOutput(FAILED, failed_event(
                    step, _safely(coordinates, args, kwargs), _safely(key, args, kwargs), element, error))
                return
            yield from outputs
        return guarded
    return decorate


def described(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def bounded(text: str) -> str:
    return f"{text[:MAX_ERROR_CHARACTERS]}… ({len(text):,} characters)" if len(text) > MAX_ERROR_CHARACTERS else text


def failed_event(step: str, coordinates: tuple | None, key, element, error: Exception) -> FailedEvent:
    try:
        text = json.dumps(element, default=str, sort_keys=True)
    except (TypeError, ValueError):  # keys that do not sort, or nest too deep
        text = repr(element)
    return FailedEvent(step, tuple(coordinates) if coordinates else None, None if key is None else str(key), text,
                       bounded(described(error)), dt.datetime.now(dt.timezone.utc))


def _safely(find, args, kwargs):
    """What `find` reads of the arguments; None when it cannot (the element may be what is malformed)."""
    try:
        return find(args, kwargs) if find else None
    except Exception:  # noqa: BLE001
        return None


def keyed_coordinates(args, kwargs) -> tuple | None:
    """The coordinates a keyed step's element carries, as the journeys key them: (key, (kind, payload,
    coordinates)), or in the payload itself when that is a dict that keeps them (a touch, an order's facts)."""
    value = args[0][1]
    if len(value) > 2:
        return value[2]
    return value[1].get(COORDINATES) if isinstance(value[1], dict) else None


def keyed_key(args, kwargs):
    """A keyed step's key: its element's for process, the key argument for a timer callback."""
    return args[0][0] if args else kwargs.get("key")


def record_coordinates(args, kwargs) -> tuple | None:
    """The coordinates of a decoded record given as the element."""
    return args[0].get(COORDINATES)


class QuarantinedMap(beam.DoFn):
    """beam.Map(fn) over decoded records, quarantined: a record fn fails on goes to FAILED with its coordinates."""

    def __init__(self, step: str, fn):
        self.step = step
        self.fn = fn

    def process(self, record):
        try:
            yield self.fn(record)
        except Exception as error:  # noqa: BLE001 - see quarantined
            yield beam.pvalue.TaggedOutput(FAILED, failed_event(self.step, record.get(COORDINATES), None, record, error))
