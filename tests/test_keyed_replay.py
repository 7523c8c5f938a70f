"""ReplayPerKey gives what the stateful ParDo gives on a bounded input: the same outputs, tagged outputs and
timestamps (TestPipeline + assert_that, both on FnApiRunner)."""
import apache_beam as beam
import pytest
from apache_beam.coders import StrUtf8Coder, VarIntCoder
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue

from transforms.keyed_replay import keyed_for, stateful_step


class _Sessionise(beam.DoFn):
    """Per key: values wait in a bag; a timer 10 s after the earliest fires, emits what is due as one batch
    (tagged "late" when it held a value under 0) and re-arms for the rest, counting its firings in a value state."""
    WAITING = BagStateSpec("waiting", VarIntCoder())
    FIRINGS = ReadModifyWriteStateSpec("firings", VarIntCoder())
    DUE = TimerSpec("due", TimeDomain.WATERMARK)
    SEEN = BagStateSpec("seen", StrUtf8Coder())

    def process(self, element, waiting=beam.DoFn.StateParam(WAITING), due=beam.DoFn.TimerParam(DUE),
                seen=beam.DoFn.StateParam(SEEN), timestamp=beam.DoFn.TimestampParam):
        key, value = element
        waiting.add(value)
        seen.add(f"{value}")
        due.set(min(abs(v) for v in waiting.read()) + 10)
        if value % 5 == 0:
            yield key, "five", value, timestamp.micros

    @on_timer(DUE)
    def fire(self, key=beam.DoFn.KeyParam, now=beam.DoFn.TimestampParam, waiting=beam.DoFn.StateParam(WAITING),
             firings=beam.DoFn.StateParam(FIRINGS), due=beam.DoFn.TimerParam(DUE)):
        values = waiting.read()
        ready = sorted(v for v in values if abs(v) + 10 <= now)
        rest = [v for v in values if abs(v) + 10 > now]
        count = (firings.read() or 0) + 1
        firings.write(count)
        batch = (key, "batch", count, tuple(ready), now.micros)
        yield beam.pvalue.TaggedOutput("late", batch) if any(v < 0 for v in ready) else batch
        waiting.clear()
        for value in rest:
            waiting.add(value)
        if rest:
            due.set(min(abs(v) for v in rest) + 10)


def _run(replay: bool) -> None:
    values = [("a", 3), ("a", 40), ("b", 7), ("a", 5), ("b", -20), ("a", 12), ("b", 100), ("c", 15)]
    with TestPipeline(runner="FnApiRunner") as pipeline:
        outputs = (pipeline | beam.Create(values)
                   | beam.Map(lambda kv: TimestampedValue(kv, abs(kv[1])))
                   | keyed_for(lambda kv: kv, replay)
                   | stateful_step(_Sessionise(), replay, ("late",), "on_time"))
        stamped = lambda label, pcoll: pcoll | label >> beam.Map(
            lambda out, t=beam.DoFn.TimestampParam: (*out, t.micros))
        assert_that(stamped("OnTime", outputs.on_time), equal_to([
            ("a", "five", 40, 40_000_000, 40_000_000), ("a", "five", 5, 5_000_000, 5_000_000),
            ("b", "five", -20, 20_000_000, 20_000_000), ("c", "five", 15, 15_000_000, 15_000_000),
            ("b", "five", 100, 100_000_000, 100_000_000),
            ("a", "batch", 1, (3,), 13_000_000, 13_000_000), ("a", "batch", 2, (5,), 15_000_000, 15_000_000),
            ("a", "batch", 3, (12,), 22_000_000, 22_000_000), ("a", "batch", 4, (40,), 50_000_000, 50_000_000),
            ("b", "batch", 1, (7,), 17_000_000, 17_000_000), ("b", "batch", 3, (100,), 110_000_000, 110_000_000),
            ("c", "batch", 1, (15,), 25_000_000, 25_000_000)]),
                    label="OnTimeOutputs")
        assert_that(stamped("Late", outputs.late), equal_to([("b", "batch", 2, (-20,), 30_000_000, 30_000_000)]),
                    label="LateOutputs")


@pytest.mark.parametrize("replay", [False, True], ids=["stateful-pardo", "replayed"])
def test_replay_emits_what_the_stateful_pardo_emits_with_its_timestamps(replay):
    _run(replay)
