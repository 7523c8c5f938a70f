"""PassEachOffsetOnce: a record read again (a new read generation starting behind the old one) passes once."""
import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.kafka_message import KafkaMessage
from transforms.offset_filter import PassEachOffsetOnce, pass_once


def _message(topic, partition, offset):
    return KafkaMessage(topic, partition, offset, None, None, b"%d" % offset, ())


def test_an_offset_behind_the_next_one_is_dropped_and_leaves_the_state_alone():
    assert pass_once(None, 7) == (8, True)
    assert pass_once(8, 8) == (9, True)
    assert pass_once(9, 3) == (9, False)
    assert pass_once(9, 12) == (13, True)  # a gap (a transaction marker, a compacted record) passes


def test_each_partition_passes_every_offset_once():
    first_read = [_message("orders", 0, o) for o in range(5)] + [_message("orders", 1, o) for o in range(3)]
    read_again = [_message("orders", 0, o) for o in range(3, 8)]  # the next generation starts at stored offset 3
    with TestPipeline(runner="FnApiRunner") as p:
        passed = (p | beam.Create(first_read + read_again, reshuffle=False) | PassEachOffsetOnce()
                  | beam.Map(lambda m: (m.topic, m.partition, m.offset)))
        assert_that(passed, equal_to([("orders", 0, o) for o in range(8)] + [("orders", 1, o) for o in range(3)]))
