"""PassEachOffsetOnce: every Kafka record passes once per stream, however often a read delivers it.

Why: on Beam 2.62's portable Flink runner, a polling splittable DoFn (our Kafka read, PeriodicImpulse) stores each
self-checkpoint under a new state name that is never cleared (apache/beam#27648), so its stage's checkpointed state
grows for as long as the stage lives. The stream launcher therefore replaces that stage now and then: the job is
restored from a savepoint with the read renamed (a new generation), whose old state Flink drops, and the new read
starts at the warehouse's stored offsets, behind where the old one stopped. Records between the two were already
counted by the restored keyed state; this step, whose state is restored, drops them.

State: the next offset to pass, per partition (a few numbers, whatever the history). A read delivers each
partition in offset order, so an offset below it was passed before.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from transforms.kafka_message import KafkaMessage


def pass_once(next_offset: int | None, offset: int) -> tuple[int | None, bool]:
    """(state, offset) → (state, whether the record passes): a record passes unless its offset is behind."""
    if next_offset is not None and offset < next_offset:
        return next_offset, False
    return offset + 1, True


class _PassOnce(beam.DoFn):
    NEXT_OFFSET = ReadModifyWriteStateSpec("next_offset", VarIntCoder())

    def __init__(self):
        self.read_again = Metrics.counter("journeys", "records_read_again")

    def process(self, keyed, next_offset=beam.DoFn.StateParam(NEXT_OFFSET)):
        _, message = keyed
        stored, passes = pass_once(next_offset.read(), message.offset)
        if passes:
            next_offset.write(stored)
            yield message
        else:
            self.read_again.inc()


class PassEachOffsetOnce(beam.PTransform):
    """KafkaMessages → the same, without any (topic, partition, offset) this step passed before."""

    def expand(self, messages):
        return (messages
                | "ByPartition" >> beam.Map(lambda m: ((m.topic, m.partition), m)).with_output_types(
                    tuple[tuple[str, int], KafkaMessage])
                | "FirstTimeOnly" >> beam.ParDo(_PassOnce()).with_output_types(KafkaMessage))
