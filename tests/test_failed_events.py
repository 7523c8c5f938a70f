"""An event a step of the journeys fails on is quarantined with its Kafka coordinates, and the pipeline goes on
(transforms/failed_events.py): the step's operator alone, then real steps failing inside the whole journeys."""
import dataclasses
import datetime as dt

import apache_beam as beam
import pytest
from apache_beam.coders import BytesCoder
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

import schemas
from pipelines.generate import GeneratorConfig, records_by_topic
from schemas.contracts import contract
from transforms import codec
from transforms.channel_grouping import ChannelRules
from transforms.customer_journeys import JourneyConfig, _Attribute
from transforms.decode_events import EventDecoder
from transforms.failed_events import (COORDINATES, FAILED, FailedEvent, keyed_coordinates, keyed_key, quarantined)
from transforms.journey_tables import CustomerJourneyTables, TablesConfig, TablesFromMessages
from transforms.json_lines import AppendJsonLines, read_json_lines
from transforms.kafka_message import KafkaMessage
from transforms.keyed_replay import keyed_for, stateful_step


class _Counter(beam.DoFn):
    """Keeps a running count per key; fails on the value "poison" after emitting, and its timer fails for key b."""
    COUNT = ReadModifyWriteStateSpec("count", BytesCoder())
    DONE = TimerSpec("done", TimeDomain.WATERMARK)

    @quarantined("Count", keyed_coordinates, keyed_key)
    def process(self, element, count=beam.DoFn.StateParam(COUNT), done=beam.DoFn.TimerParam(DONE)):
        key, (kind, value, *_) = element
        seen = int(count.read() or b"0") + 1
        yield f"{key} {value}"
        if value == "poison":
            raise ValueError("cannot count poison")
        count.write(str(seen).encode())
        done.set(Timestamp(1000))

    @on_timer(DONE)
    @quarantined("Count", key=keyed_key)
    def finish(self, key=beam.DoFn.KeyParam, count=beam.DoFn.StateParam(COUNT)):
        if key == "b":
            raise RuntimeError("b cannot finish")
        yield f"{key} counted {int(count.read())}"


@pytest.mark.parametrize("replay", [False, True])
def test_an_element_a_step_fails_on_gives_none_of_its_outputs_and_the_step_goes_on(replay):
    values = [("a", "x", ("t", 0, 1)), ("a", "poison", ("t", 0, 2)), ("a", "y", ("t", 0, 3)), ("b", "z", ("t", 1, 4))]
    with TestPipeline(runner="FnApiRunner") as pipeline:
        outputs = (pipeline | beam.Create(values) | beam.Map(lambda v: TimestampedValue(v, 10))
                   | keyed_for(lambda v: (v[0], ("value", v[1], v[2])), replay)
                   | stateful_step(_Counter(), replay, (FAILED,), "counted"))
        assert_that(outputs.counted, equal_to(["a x", "a y", "b z", "a counted 2"]), label="counted")
        failed = outputs[FAILED] | beam.Map(lambda f: (f.step, f.coordinates, f.key, f.error))
        assert_that(failed, equal_to([("Count", ("t", 0, 2), "a", "ValueError: cannot count poison"),
                                      ("Count", None, "b", "RuntimeError: b cannot finish")]), label="failed")


def test_a_failed_event_lands_as_a_dead_letter_of_the_journeys_stage_that_the_contract_accepts():
    when = dt.datetime(2026, 9, 1, tzinfo=dt.timezone.utc)
    failed = FailedEvent("Attribute", (1, 2, 41), "ps_c1", '{"order_id": "o1"}', "ZeroDivisionError: x", when)
    row = failed.row(("p.web_sessions", "p.orders"))
    assert (row["topic"], row["partition"], row["offset"], row["stage"], row["reason"], row["error"]) == (
        "p.orders", 2, 41, "journeys", "step_failed", "Attribute: ZeroDivisionError: x")
    assert row["value"] == b'{"order_id": "o1"}' and row["key"] is None
    assert row["stage"] in next(c for c in contract("dead_letters").columns if c.name == "stage").accepted_values
    timer = dataclasses.replace(failed, coordinates=None).row(("p.web_sessions", "p.orders"))
    assert (timer["topic"], timer["partition"]) == ("journeys:Attribute", -1)


@dataclasses.dataclass(frozen=True)
class _RulesThatFailOn(ChannelRules):
    """Channel grouping with a bug that one session meets."""
    session_id: str = ""

    def session_channel(self, session):
        if session["session_id"] == self.session_id:
            raise KeyError("utm_source")
        return super().session_channel(session)


WORLD = GeneratorConfig(customers=40, days=30, seed=11)


def _with_coordinates(world: dict) -> dict:
    """The records as the decoder gives them: each with (topic's index, partition, offset)."""
    return {topic: [{**record, COORDINATES: (schemas.TOPICS.index(topic), 0, offset)} for offset, record in enumerate(records)]
            for topic, records in world.items()}


def _journeys(world, config: TablesConfig, out) -> dict:
    with TestPipeline(runner="FnApiRunner") as pipeline:
        topics = {topic: (pipeline | f"Create{topic}" >> beam.Create(records)
                          | f"Time{topic}" >> beam.Map(lambda r: TimestampedValue(r, Timestamp.from_utc_datetime(
                              r["event_time"]))))
                  for topic, records in world.items()}
        tables = topics | CustomerJourneyTables(config)
        tables[FAILED] = tables[FAILED] | "FailedAsRows" >> beam.Map(dataclasses.asdict)
        for name, rows in tables.items():
            _ = rows | f"Write{name}" >> beam.ParDo(AppendJsonLines(str(out / f"{name}.jsonl")))
    return {name: read_json_lines(out / f"{name}.jsonl") for name in tables}


@pytest.mark.parametrize("replay", [False, True])
def test_a_session_the_channel_rules_fail_on_is_quarantined_with_its_coordinates_and_every_other_event_lands(
        replay, tmp_path):
    world = _with_coordinates(records_by_topic(WORLD, b"k"))
    poison = world["web_sessions"][17]
    config = TablesConfig(JourneyConfig(channels=_RulesThatFailOn(session_id=poison["session_id"])),
                          update_every_s=None, replay_keyed_state=replay)
    tables = _journeys(world, config, tmp_path)
    assert [(f["step"], tuple(f["coordinates"]), f["error"]) for f in tables[FAILED]] == [
        ("RouteSessions", (schemas.TOPICS.index("web_sessions"), 0, 17), "KeyError: 'utm_source'")]
    landed = {row["touch_id"] for row in tables["touchpoints"]}
    sessions = {s["session_id"] for s in world["web_sessions"]} - {poison["session_id"]}
    assert poison["session_id"] not in landed and sessions <= landed
    assert tables["order_attribution"] and tables["customers"]


@pytest.mark.parametrize("replay", [False, True])
def test_an_order_attribution_fails_on_is_quarantined_with_its_coordinates_and_the_others_are_attributed(
        replay, tmp_path, monkeypatch):
    world = _with_coordinates(records_by_topic(WORLD, b"k"))
    placed = [o for o in world["orders"] if o["status"] == "placed"]
    poison = placed[3]
    rows = _Attribute._rows

    def rows_with_a_bug(self, customer_id, order, touches, reversals):
        if order["order_id"] == poison["order_id"]:
            raise ZeroDivisionError("credit of an empty path")
        return rows(self, customer_id, order, touches, reversals)
    monkeypatch.setattr(_Attribute, "_rows", rows_with_a_bug)  # FnApiRunner runs the steps in this process
    tables = _journeys(world, TablesConfig(update_every_s=None, replay_keyed_state=replay), tmp_path)
    assert [(f["step"], tuple(f["coordinates"]), f["key"], f["error"]) for f in tables[FAILED]] == [
        ("Attribute", (schemas.TOPICS.index("orders"), 0, world["orders"].index(poison)), poison["customer_id"],
         "ZeroDivisionError: credit of an empty path")]
    attributed = {row["order_id"] for row in tables["order_attribution"]}
    assert poison["order_id"] not in attributed
    assert {o["order_id"] for o in placed} - {poison["order_id"]} <= attributed


def _message(topic, offset, value, headers=()):
    return KafkaMessage(topic, 2, offset, None, b"k", value, tuple(headers))


def test_the_pipeline_lands_a_failed_event_beside_the_messages_that_did_not_decode(tmp_path):
    world = records_by_topic(WORLD, b"k")
    poison = world["web_sessions"][5]
    messages = [_message(f"p.{topic}", offset, *codec.encode(topic, record))
                for topic in schemas.TOPICS for offset, record in enumerate(world[topic])]
    messages.append(_message("p.orders", 99, b"\x00 not an order"))
    config = TablesConfig(JourneyConfig(channels=_RulesThatFailOn(session_id=poison["session_id"])),
                          update_every_s=None, replay_keyed_state=True)
    with TestPipeline(runner="FnApiRunner") as pipeline:
        tables = (pipeline | beam.Create(messages) | beam.Map(lambda m: TimestampedValue(m, 0))
                  | TablesFromMessages(EventDecoder.for_prefix("p."), config))
        dead = tables["dead_letters"] | beam.Map(lambda r: (r["topic"], r["partition"], r["offset"], r["stage"],
                                                            r["reason"]))
        assert_that(dead, equal_to([("p.web_sessions", 2, 5, "journeys", "step_failed"),
                                    ("p.orders", 2, 99, "decode", "unknown_schema_id")]))
