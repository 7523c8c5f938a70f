"""Which Beam features our pipelines use work on Beam's Flink job server 2.62 (Flink 1.19) when the pipeline comes
from the 2.77 Python SDK (portable FlinkRunner, LOOPBACK workers: the SDK harness runs in this test process).

One job server for the module, with an embedded Flink mini-cluster per job (`--flink-master=[local]`), on free ports
of its own: never the shared session cluster. Each test runs one small pipeline and checks its real output; a
feature that does not work is pinned by the exact error it fails with, so an upgrade that fixes it shows up here.

Streaming jobs end by themselves: bounded inputs (Create, a PeriodicImpulse with a stop, a source that reports the
MAX watermark) finish and the Flink job with them. With checkpointing on, Beam keeps its sources alive forever (so
that checkpoints can still be taken) unless `--shutdown_sources_after_idle_ms` says otherwise.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.coders import BytesCoder, PickleCoder, StrUtf8Coder, TupleCoder, VarIntCoder
from apache_beam.io.unbounded_source import CheckpointMark, ReadFromUnboundedSource, UnboundedReader, UnboundedSource
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import AsDict, AsList, AsSingleton, TaggedOutput
from apache_beam.runners.runner import PipelineState
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing import test_stream
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from apache_beam.transforms import trigger, window
from apache_beam.transforms.periodicsequence import PeriodicImpulse
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (BagStateSpec, CombiningValueStateSpec, ReadModifyWriteStateSpec,
                                              TimerSpec, on_timer)
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Duration, Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming, WindowedValue

import pipelines.flink  # noqa: F401 (declares --checkpointing_interval, --state_backend, ... to the Python SDK)
from pipelines.flink import FLINK_VERSION, LocalCluster

pytestmark = [pytest.mark.slow, pytest.mark.flink]
JOB_TIMEOUT_S = 90  # a job still running then is cancelled and the test fails


class _SourceShutdownOptions(PipelineOptions):
    """Beam's Java FlinkPipelineOptions.shutdownSourcesAfterIdleMs. The Flink runner sends the job server only the
    options Python knows: an undeclared one would be dropped on the way."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--shutdown_sources_after_idle_ms", type=int)


# --- the job server ------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("localhost", port)) == 0


@pytest.fixture(scope="module")
def job_server(tmp_path_factory):
    """A Beam Flink job server (our jar) with an embedded mini-cluster per job: its job endpoint."""
    jar = LocalCluster().fetch()
    folder = tmp_path_factory.mktemp("flink-job-server")
    job_port, artifact_port, expansion_port = (_free_port() for _ in range(3))
    log = (folder / "job-server.log").open("wb")
    server = subprocess.Popen(
        ["java", "-Xmx1g", "-cp", str(jar), "org.apache.beam.runners.flink.FlinkJobServerDriver",
         "--flink-master=[local]", "--job-port", str(job_port), "--artifact-port", str(artifact_port),
         "--expansion-port", str(expansion_port), "--artifacts-dir", str(folder / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not _accepts(job_port):
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the job server did not start (exit {server.poll()}): "
                                   f"{(folder / 'job-server.log').read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield f"localhost:{job_port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _options(endpoint: str, *extra: str) -> PipelineOptions:
    return PipelineOptions([f"--runner=FlinkRunner", f"--flink_version={FLINK_VERSION}", f"--job_endpoint={endpoint}",
                            "--environment_type=LOOPBACK", "--parallelism=1", *extra])


@contextlib.contextmanager
def flink_pipeline(endpoint: str, *extra: str, timeout_s: float = JOB_TIMEOUT_S):
    """A TestPipeline that runs on the job server when the block ends, and must end DONE within timeout_s."""
    pipeline = TestPipeline(options=_options(endpoint, *extra), blocking=False)
    yield pipeline
    result = pipeline.run()
    watchdog = threading.Timer(timeout_s, result.cancel)
    watchdog.start()
    try:
        state = result.wait_until_finish()
    except Exception:
        if not watchdog.is_alive():
            raise AssertionError(f"the job did not end within {timeout_s} s (cancelled)")
        raise
    finally:
        watchdog.cancel()
    assert state == PipelineState.DONE, state


STREAMING = ("--streaming",)


def _at(seconds: float) -> Timestamp:
    return Timestamp(seconds)


# --- batch ---------------------------------------------------------------------------------------------------------

def test_group_by_key_combine_per_key_and_combine_globally(job_server):
    with flink_pipeline(job_server) as p:
        pairs = p | beam.Create([("a", 1), ("b", 2), ("a", 3), ("c", 4), ("a", 5)])
        grouped = pairs | beam.GroupByKey() | beam.MapTuple(lambda k, vs: (k, sorted(vs)))
        assert_that(grouped, equal_to([("a", [1, 3, 5]), ("b", [2]), ("c", [4])]), label="GroupByKey")
        assert_that(pairs | beam.CombinePerKey(sum), equal_to([("a", 9), ("b", 2), ("c", 4)]), label="PerKey")
        assert_that(pairs | beam.Values() | beam.CombineGlobally(sum), equal_to([15]), label="Globally")


def test_side_inputs_as_dict_as_list_and_as_singleton(job_server):
    with flink_pipeline(job_server) as p:
        rates = p | "Rates" >> beam.Create([("EUR", 2), ("USD", 1)])
        blocked = p | "Blocked" >> beam.Create(["mallory"])
        bonus = p | "Bonus" >> beam.Create([100])
        orders = p | "Orders" >> beam.Create([("alice", "EUR", 5), ("bob", "USD", 7), ("mallory", "EUR", 1)])
        valued = orders | beam.FlatMap(
            lambda o, rates, blocked, bonus: [] if o[0] in blocked else [(o[0], o[2] * rates[o[1]] + bonus)],
            rates=AsDict(rates), blocked=AsList(blocked), bonus=AsSingleton(bonus))
        assert_that(valued, equal_to([("alice", 110), ("bob", 107)]))


class _Route(beam.DoFn):
    def process(self, n):
        yield TaggedOutput("odd" if n % 2 else "even", n)
        if n == 0:
            yield n  # main output


def test_tagged_outputs_flatten_and_reshuffle(job_server):
    with flink_pipeline(job_server) as p:
        routed = p | beam.Create(range(7)) | beam.ParDo(_Route()).with_outputs("odd", "even", main="zero")
        assert_that(routed.zero, equal_to([0]), label="Main")
        assert_that(routed.odd, equal_to([1, 3, 5]), label="Odd")
        assert_that(routed.even, equal_to([0, 2, 4, 6]), label="Even")
        merged = (routed.odd, routed.even | beam.Map(lambda n: -n)) | beam.Flatten() | beam.Reshuffle()
        assert_that(merged, equal_to([1, 3, 5, 0, -2, -4, -6]), label="FlattenReshuffle")


def _windowed_counts(pcoll, windowing, label):
    return (pcoll | f"Window{label}" >> beam.WindowInto(windowing)
            | f"Count{label}" >> beam.CombinePerKey(sum)
            | f"Bounds{label}" >> beam.ParDo(_WithWindow()))


class _WithWindow(beam.DoFn):
    def process(self, kv, w=beam.DoFn.WindowParam):
        yield kv[0], float(w.start), float(w.end), kv[1]


def _timed_clicks(p):
    clicks = [("u", 1), ("u", 3), ("u", 12), ("u", 40), ("v", 41)]
    return p | beam.Create(clicks) | beam.Map(lambda c: window.TimestampedValue((c[0], 1), c[1]))


def test_windowed_group_by_key_fixed_sliding_and_sessions(job_server):
    with flink_pipeline(job_server) as p:
        clicks = _timed_clicks(p)
        assert_that(_windowed_counts(clicks, window.FixedWindows(10), "Fixed"),
                    equal_to([("u", 0, 10, 2), ("u", 10, 20, 1), ("u", 40, 50, 1), ("v", 40, 50, 1)]), label="Fixed")
        assert_that(_windowed_counts(clicks, window.SlidingWindows(20, 10), "Sliding"),
                    equal_to([("u", -10, 10, 2), ("u", 0, 20, 3), ("u", 10, 30, 1), ("u", 30, 50, 1),
                              ("u", 40, 60, 1), ("v", 30, 50, 1), ("v", 40, 60, 1)]), label="Sliding")
        grouped = (clicks | beam.WindowInto(window.Sessions(5)) | beam.GroupByKey()
                   | beam.ParDo(_WithWindow()) | beam.Map(lambda r: (*r[:3], len(r[3]))))
        assert_that(grouped, equal_to([("u", 1, 8, 2), ("u", 12, 17, 1), ("u", 40, 45, 1), ("v", 41, 46, 1)]),
                    label="Sessions")


class _Batched(beam.DoFn):
    """Emits from finish_bundle: a WindowedValue, as transforms/warehouse.py's _ReadPositions does."""

    def start_bundle(self):
        self.seen = []
        self.earliest = None

    def process(self, n, timestamp=beam.DoFn.TimestampParam):
        self.seen.append(n)
        self.earliest = timestamp if self.earliest is None else min(self.earliest, timestamp)

    def finish_bundle(self):
        if self.seen:
            yield WindowedValue(("bundle", sum(self.seen)), self.earliest, [window.GlobalWindow()])


class _Pane(beam.DoFn):
    def process(self, element, pane=beam.DoFn.PaneInfoParam):
        yield element, pane.index, pane.is_first, pane.is_last, pane.timing


@pytest.mark.parametrize("mode", ["batch", "streaming"])
def test_windowed_value_from_finish_bundle_and_pane_info(job_server, mode):
    with flink_pipeline(job_server, *(STREAMING if mode == "streaming" else ())) as p:
        sums = p | beam.Create([1, 2, 3, 4]) | beam.ParDo(_Batched()) | beam.CombinePerKey(sum)
        panes = sums | beam.ParDo(_Pane())
        # one firing of the default trigger: pane 0, first and last, ON_TIME
        assert_that(panes, equal_to([(("bundle", 10), 0, True, True, PaneInfoTiming.ON_TIME)]))


# --- state and timers ----------------------------------------------------------------------------------------------

class _Tally(beam.DoFn):
    """Bag, value and combining state; an event-time timer that re-arms itself twice."""
    SEEN = BagStateSpec("seen", VarIntCoder())
    TOTAL = CombiningValueStateSpec("total", VarIntCoder(), sum)
    FIRINGS = ReadModifyWriteStateSpec("firings", VarIntCoder())
    TICK = TimerSpec("tick", TimeDomain.WATERMARK)

    def process(self, element, seen=beam.DoFn.StateParam(SEEN), total=beam.DoFn.StateParam(TOTAL),
                tick=beam.DoFn.TimerParam(TICK)):
        _, n = element
        seen.add(n)
        total.add(n)
        tick.set(_at(100))

    @on_timer(TICK)
    def on_tick(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam, seen=beam.DoFn.StateParam(SEEN),
                total=beam.DoFn.StateParam(TOTAL), firings=beam.DoFn.StateParam(FIRINGS),
                tick=beam.DoFn.TimerParam(TICK)):
        count = (firings.read() or 0) + 1
        firings.write(count)
        yield key, fired.micros // 1_000_000, count, sorted(seen.read()), total.read()
        total.add(1000)  # state written by a timer is seen by the next firing
        if count < 3:
            tick.set(fired + Duration(seconds=10))


@pytest.mark.parametrize("mode", ["batch", "streaming"])
def test_stateful_dofn_bag_value_combining_state_and_rearming_event_time_timer(job_server, mode):
    with flink_pipeline(job_server, *(STREAMING if mode == "streaming" else ())) as p:
        keyed = (p | beam.Create([("a", 1), ("b", 2), ("a", 3), ("a", 5)])
                 | beam.Map(lambda kv: window.TimestampedValue(kv, kv[1])))
        fired = keyed | beam.ParDo(_Tally())
        assert_that(fired, equal_to([
            ("a", 100, 1, [1, 3, 5], 9), ("a", 110, 2, [1, 3, 5], 1009), ("a", 120, 3, [1, 3, 5], 2009),
            ("b", 100, 1, [2], 2), ("b", 110, 2, [2], 1002), ("b", 120, 3, [2], 2002)]))


class _FlushAfterAWhile(beam.DoFn):
    """Buffers a key's values and flushes them from a processing-time timer (one second of wall time later)."""
    BUFFER = BagStateSpec("buffer", VarIntCoder())
    FLUSH = TimerSpec("flush", TimeDomain.REAL_TIME)

    def process(self, element, buffer=beam.DoFn.StateParam(BUFFER), flush=beam.DoFn.TimerParam(FLUSH)):
        buffer.add(element[1])
        flush.set(Timestamp.now() + Duration(seconds=1))

    @on_timer(FLUSH)
    def on_flush(self, key=beam.DoFn.KeyParam, buffer=beam.DoFn.StateParam(BUFFER)):
        yield key, sorted(buffer.read())
        buffer.clear()


def test_processing_time_timer_in_streaming(job_server):
    with flink_pipeline(job_server, *STREAMING) as p:
        flushed = p | beam.Create([("a", 1), ("b", 2), ("a", 3)]) | beam.ParDo(_FlushAfterAWhile())
        assert_that(flushed, equal_to([("a", [1, 3]), ("b", [2])]))


# --- streaming -----------------------------------------------------------------------------------------------------

def test_periodic_impulse_into_fixed_windows_counts(job_server):
    now = int(time.time())
    start = now - now % 2 - 2  # a whole window in the past, the last ones still ahead when the job starts
    with flink_pipeline(job_server, *STREAMING) as p:
        counts = (p | PeriodicImpulse(start_timestamp=_at(start), stop_timestamp=_at(start + 6), fire_interval=0.5)
                  | beam.WindowInto(window.FixedWindows(2)) | beam.Map(lambda _: ("tick", 1))
                  | beam.CombinePerKey(sum) | beam.ParDo(_WithWindow()))
        assert_that(counts, equal_to([("tick", start + s, start + s + 2, 4) for s in (0, 2, 4)]))


def _panes_of_an_accumulating_count(p, early):
    """A PeriodicImpulse of 8 ticks, 0.4 s apart, counted in the global window with early firings, accumulating."""
    start = Timestamp.now() + Duration(seconds=2)  # the ticks come while the job runs, not all at once
    return (p | PeriodicImpulse(start_timestamp=start, stop_timestamp=start + Duration(seconds=3.2), fire_interval=0.4)
            | beam.Map(lambda _: ("tick", 1))
            | beam.WindowInto(window.GlobalWindows(), trigger=trigger.AfterWatermark(early=early),
                              accumulation_mode=trigger.AccumulationMode.ACCUMULATING)
            | beam.CombinePerKey(sum) | beam.Values() | beam.ParDo(_Pane()))


def _accumulating_panes(min_early: int):
    """Panes 0, 1, ... in order: early ones with growing counts, then the last, ON_TIME, with all 8."""

    def check(panes):
        panes = sorted(panes, key=lambda pane: pane[1])
        if [pane[1] for pane in panes] != list(range(len(panes))):
            raise BeamAssertException(f"pane indexes not 0..n: {panes}")
        *early, last = panes
        if last != (8, len(early), len(early) == 0, True, PaneInfoTiming.ON_TIME):
            raise BeamAssertException(f"last pane {last} of {panes}")
        counts = [pane[0] for pane in early]
        if (len(early) < min_early or counts != sorted(set(counts)) or not all(0 < c <= 8 for c in counts)
                or any(pane[4] != PaneInfoTiming.EARLY for pane in early)):
            raise BeamAssertException(f"early panes {early}")
    return check


def test_early_firings_after_count_with_accumulating_panes(job_server):
    with flink_pipeline(job_server, *STREAMING) as p:
        panes = _panes_of_an_accumulating_count(p, early=trigger.AfterCount(1))
        assert_that(panes, _accumulating_panes(min_early=2))


def test_early_firings_after_processing_time_with_accumulating_panes(job_server):
    # customer_profiles.updating_global_window: AfterWatermark(early=AfterProcessingTime(s)), accumulating
    with flink_pipeline(job_server, *STREAMING) as p:
        panes = _panes_of_an_accumulating_count(p, early=trigger.AfterProcessingTime(1))
        assert_that(panes, _accumulating_panes(min_early=1))


class _NumberMark(CheckpointMark):
    """The next number to read; finalizing it appends it to a file (when the source has one)."""

    def __init__(self, next_number: int, log: str | None):
        self.next_number = next_number
        self.log = log

    def finalize_checkpoint(self):
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{self.next_number}\n")


class _NumberReader(UnboundedReader):
    def __init__(self, source: "_Numbers", mark: _NumberMark | None):
        self.source = source
        self.next = mark.next_number if mark else 0
        self.current = None
        self.last_at = 0.0

    def start(self):
        return self.advance()

    def advance(self):
        if self.next >= self.source.count or time.monotonic() - self.last_at < self.source.every_s:
            return False  # none now (the wrapper polls again later), or none ever (the watermark says which)
        self.current, self.next, self.last_at = self.next, self.next + 1, time.monotonic()
        return True

    def get_current(self):
        return self.current

    def get_current_timestamp(self):
        return _at(self.current)  # number n at second n

    def get_watermark(self):
        return MAX_TIMESTAMP if self.next >= self.source.count else _at(self.next - 1)

    def get_checkpoint_mark(self):
        return _NumberMark(self.next, self.source.log)


class _Numbers(UnboundedSource):
    """0, 1, ..., count-1 (number n at second n, one each `every_s` of wall time), then the end: MAX watermark."""

    def __init__(self, count: int, every_s: float = 0.0, log: str | None = None):
        self.count = count
        self.every_s = every_s
        self.log = log

    def split(self, desired_num_splits, options=None):
        return [self]

    def create_reader(self, options, checkpoint_mark):
        return _NumberReader(self, checkpoint_mark)

    def get_checkpoint_mark_coder(self):
        return PickleCoder()

    def default_output_coder(self):
        return VarIntCoder()


@pytest.mark.parametrize("mode", ["batch", "streaming"])
def test_unbounded_source_read_with_checkpoint_marks(job_server, mode):
    # 7 records a bundle: the reader is rebuilt from its checkpoint marks 4 times (kafka_source.py reads this way)
    with flink_pipeline(job_server, *(STREAMING if mode == "streaming" else ())) as p:
        numbers = p | ReadFromUnboundedSource(_Numbers(30), poll_interval=0.1, max_records_per_bundle=7)
        assert_that(numbers, equal_to(list(range(30))), label="Numbers")
        per_window = (numbers | beam.WindowInto(window.FixedWindows(10)) | beam.Map(lambda n: ("n", n))
                      | beam.CombinePerKey(sum) | beam.ParDo(_WithWindow()))
        assert_that(per_window, equal_to([("n", 0, 10, 45), ("n", 10, 20, 145), ("n", 20, 30, 245)]),
                    label="Windows")


# --- TestStream ----------------------------------------------------------------------------------------------------

def _late_drop(p, stream: test_stream.TestStream, decode=lambda e: e):
    """a@1 on time, the watermark to 20, a@2 late (its window [0, 10) is gone: dropped), a@25 on time."""
    return (p | stream | beam.Map(decode) | beam.WindowInto(window.FixedWindows(10))
            | beam.CombinePerKey(sum) | beam.ParDo(_WithWindow()))


def _events(stream: test_stream.TestStream, event):
    return (stream.add_elements([window.TimestampedValue(event, 1)]).advance_watermark_to(20)
            .add_elements([window.TimestampedValue(event, 2)])
            .add_elements([window.TimestampedValue(event, 25)]).advance_watermark_to_infinity())


def test_teststream_of_bytes_works_with_its_watermark(job_server):
    stream = _events(test_stream.TestStream(coder=BytesCoder()), b"a").with_output_types(bytes)
    with flink_pipeline(job_server, *STREAMING) as p:
        counts = _late_drop(p, stream, decode=lambda b: (b.decode(), 1))
        assert_that(counts, equal_to([("a", 0, 10, 1), ("a", 20, 30, 1)]))


@pytest.mark.parametrize("coder, error", [
    # test_stream.TestStream() as tests/test_journeys_streaming.py builds it: Python's pickling coder, which Java cannot read
    (None, "`UnknownCoderWrapper` was used to perform an actual decoding in the Java SDK"),
    # a standard coder: the runner's TestStream source takes every element for byte[]
    (TupleCoder([StrUtf8Coder(), VarIntCoder()]),
     "class org.apache.beam.sdk.values.KV cannot be cast to class [B"),
])
def test_teststream_of_other_elements_fails(job_server, coder, error):
    stream = _events(test_stream.TestStream(coder=coder) if coder else test_stream.TestStream(), ("a", 1))
    with pytest.raises(RuntimeError, match=r"failed in state FAILED: .*" + _escaped(error)):
        with flink_pipeline(job_server, *STREAMING) as p:
            assert_that(_late_drop(p, stream), equal_to([("a", 0, 10, 1), ("a", 20, 30, 1)]))


def _escaped(text: str) -> str:
    import re
    return re.escape(text)


# --- Flink options -------------------------------------------------------------------------------------------------

def test_checkpointing_and_rocksdb_state_backend_options_reach_flink(job_server, tmp_path):
    """A stream with checkpoints every 300 ms in RocksDB: Flink finalizes the source's checkpoint marks (bundle
    finalization happens on completed checkpoints) and retains the last checkpoint where we said."""
    finalized = tmp_path / "finalized"
    storage = tmp_path / "checkpoints"
    with flink_pipeline(job_server, *STREAMING, "--checkpointing_interval=300", "--state_backend=rocksdb",
                        f"--state_backend_storage_path={storage.as_uri()}", "--externalized_checkpoints_enabled",
                        "--retain_externalized_checkpoints_on_cancellation",
                        "--shutdown_sources_after_idle_ms=1000") as p:
        numbers = p | ReadFromUnboundedSource(_Numbers(20, every_s=0.15, log=str(finalized)), poll_interval=0.05)
        fired = numbers | beam.Map(lambda n: ("k", n)) | beam.ParDo(_Tally())  # its state in RocksDB
        assert_that(fired | beam.Map(lambda r: r[:3] + (len(r[3]), r[4])),
                    equal_to([("k", 100, 1, 20, 190), ("k", 110, 2, 20, 1190), ("k", 120, 3, 20, 2190)]))
    marks = [int(n) for n in finalized.read_text().split()] if finalized.exists() else []
    assert marks and all(0 < m <= 20 for m in marks), marks
    assert list(storage.glob("*/chk-*/_metadata")), sorted(str(f) for f in storage.rglob("*"))[:20]


def test_unknown_state_backend_is_refused_by_flink(job_server):
    # the option reaches the job server, which refuses what it does not know
    with pytest.raises(RuntimeError, match="(?i)state.?backend"):
        with flink_pipeline(job_server, *STREAMING, "--state_backend=nosuchbackend") as p:
            assert_that(p | beam.Create([1]), equal_to([1]))


def test_checkpointed_stream_without_source_shutdown_never_ends(job_server):
    """With checkpointing and no --shutdown_sources_after_idle_ms, Beam keeps the sources running forever (so that
    checkpoints can still be taken): a bounded stream never finishes; it has to be cancelled."""
    with pytest.raises(AssertionError, match="did not end within 20 s"):
        with flink_pipeline(job_server, *STREAMING, "--checkpointing_interval=1000", timeout_s=20) as p:
            assert_that(p | beam.Create([1, 2]), equal_to([1, 2]))
