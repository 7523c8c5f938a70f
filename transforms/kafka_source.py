"""ReadFromKafka: a pure-Python Kafka source for Beam, on kafka-python and Beam's UnboundedSource API.

Works on every runner that runs Python SDFs (DirectRunner, Prism, Flink, Dataflow): no Java expansion service.

- One split per topic-partition known at launch, plus (when streaming) one split that picks up partitions
  created later. Each split's checkpoint mark is its next offsets, so a resumed reader continues exactly there.
- Streaming (unbounded) or backfill (bounded: stops at the end offsets snapshotted at launch, or given ones).
- Start: earliest, latest, explicit offsets (e.g. stored with the results), a timestamp (offsets_for_times), or
  the group's committed offsets. All are resolved to explicit offsets once, at launch.
- Element timestamps: the payload's event time (decoded once, in the reader) or the Kafka timestamp.
  Watermark per partition = newest timestamp seen − max_out_of_orderness. A partition that every look for
  idle_after_s found read to its end (no record read in between) is idle: its event time goes on at the pace of
  the wall clock from its newest record, up to the wall clock itself. Live records (event time ≈ now) thus never
  hold the pipeline back, and a replayed history whose next part comes minutes later does not find the watermark
  weeks past it (a live job would stitch and attribute that part as late data, unlike a backfill). With
  flush_after_idle_s, a partition idle that long jumps to the wall clock: replayed history completes (windows,
  attributions), and records with older event times that come later count as late. Only a partition read to its
  end can be idle: a reader the runner did not schedule for a while, or one still replaying a backlog, must not
  push the watermark past records it has not read yet. How often the runner schedules a quiet split does not
  matter: unread records show at the next look.
- group_id: offsets are committed when Beam finalizes a checkpoint, for lag monitoring only; the pipeline never
  reads them back unless asked to start from them.
"""
from __future__ import annotations

import collections
import datetime as dt
import logging
import threading
import time
import uuid
import dataclasses
from dataclasses import dataclass

import apache_beam as beam
from apache_beam import coders
from apache_beam.transforms import window
from apache_beam.io.unbounded_source import CheckpointMark, ReadFromUnboundedSource, UnboundedReader, UnboundedSource
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from transforms.decode_events import DeadLetter, EventDecoder, duplicate
from transforms.dedupe import DEFAULT_HORIZON, RecentEventIds, recent_event_ids
from transforms.event_time import timestamp_of
from transforms.kafka_connection import KafkaConnection
from transforms.kafka_message import KafkaMessage

log = logging.getLogger(__name__)

Partition = tuple[str, int]  # (topic, partition)
Offsets = tuple[tuple[Partition, int], ...]  # sorted, hashable {partition: offset}
_GLOBAL = (window.GlobalWindow(),)


@dataclass(frozen=True)
class StartAt:
    """Where a partition is read from when there is no checkpoint to resume from."""
    kind: str = "earliest"  # earliest | latest | offsets | timestamp | committed
    offsets: Offsets = ()  # kind=offsets: next offset per partition (others start at the earliest)
    timestamp_ms: int | None = None  # kind=timestamp

    @classmethod
    def at_offsets(cls, offsets: dict[Partition, int]) -> "StartAt":
        return cls("offsets", tuple(sorted(offsets.items())))

    @classmethod
    def at_time(cls, when: dt.datetime) -> "StartAt":
        return cls("timestamp", timestamp_ms=int(when.timestamp() * 1000))


@dataclass(frozen=True)
class KafkaReadSpec:
    """Everything a reader needs, resolved at launch: picklable, immutable, no live clients."""
    connection: KafkaConnection
    topics: tuple[str, ...]
    start_offsets: Offsets  # per partition known at launch
    stop_offsets: Offsets | None  # bounded: read up to (excluding) these; None: unbounded
    known_partitions: tuple[tuple[str, int], ...]  # (topic, partition count at launch), for discovery
    event_time: EventDecoder | None  # decode in the reader and use the payload's event time; None: Kafka time
    group_id: str | None = None
    isolation_level: str = "read_uncommitted"
    max_out_of_orderness_s: float = 5.0
    idle_after_s: float = 10.0
    flush_after_idle_s: float | None = None  # idle this long: the watermark jumps to the wall clock
    discovery_interval_s: float = 30.0
    poll_timeout_ms: int = 200
    launch: str = ""  # one id per launch of the read: its splits' watermark reports (_aligned)
    dedupe_horizon: int = DEFAULT_HORIZON  # event ids remembered per partition (transforms/dedupe.py)


class KafkaCheckpointMark(CheckpointMark):
    """The next offset of every partition a split reads: where its reader resumes. It also carries each
    partition's watermark clock: runners rebuild readers from checkpoints between bundles (Prism does every few
    seconds), and a rebuilt reader that started its idle timer afresh would never see a quiet partition as idle."""

    def __init__(self, spec: KafkaReadSpec, next_offsets: Offsets, clocks: tuple = ()):
        self.spec = spec
        self.next_offsets = next_offsets
        self.clocks: tuple[tuple[Partition, _PartitionClock], ...] = clocks

    def finalize_checkpoint(self) -> None:
        if self.spec.group_id and self.next_offsets:
            _GroupCommitter.commit(self.spec, dict(self.next_offsets))

    def __eq__(self, other):
        return isinstance(other, KafkaCheckpointMark) and other.next_offsets == self.next_offsets

    def __hash__(self):
        return hash(self.next_offsets)

    def __repr__(self):
        return f"KafkaCheckpointMark({dict(self.next_offsets)})"


class _GroupCommitter:
    """One consumer per (cluster, group) per worker process, to commit offsets for lag monitoring. Never backwards:
    a runner may finalize the checkpoints of a reader's bundles out of order (a reader of several partitions
    moved the group's committed total back by thousands of records)."""
    _consumers: dict = {}
    _committed: dict = {}  # (cluster, group, launch, partition) → the offset this process last committed for it
    _lock = threading.Lock()

    @classmethod
    def commit(cls, spec: KafkaReadSpec, offsets: dict[Partition, int]) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        key = (spec.connection, spec.group_id)
        with cls._lock:
            consumer = cls._consumers.get(key)
            if consumer is None:
                consumer = spec.connection.consumer(group_id=spec.group_id, enable_auto_commit=False)
                cls._consumers[key] = consumer
            # per launch: a new job on the same group (a topic recreated, a replay) commits from where it reads
            ahead = {tp: o for tp, o in offsets.items() if o > cls._committed.get((*key, spec.launch, tp), -1)}
            if not ahead:
                return
            consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in ahead.items()})
            cls._committed.update({(*key, spec.launch, tp): o for tp, o in ahead.items()})


class _ConsumerPool:
    """Idle consumers of this worker process, by cluster and partitions.

    Runners rebuild readers from checkpoints: Prism resumes a split on whichever bundle processor comes next,
    while Beam parks the old reader in the cache of the processor it left, where nothing may ever close it. A
    reader holding its consumer there leaked one consumer (and its network thread) per bundle: 100 of them
    starved a 2-core machine within a minute. So a reader hands its consumer back here at every checkpoint and
    takes one when it reads again: the same consumer serves the split's next bundle wherever that runs.
    """
    IDLE_CLOSE_S = 60.0
    _idle: dict = collections.defaultdict(list)  # key → [(consumer, given back at)]
    _lock = threading.Lock()

    @staticmethod
    def _key(spec: KafkaReadSpec, partitions) -> tuple:
        return spec.connection, spec.isolation_level, tuple(sorted(partitions))

    @classmethod
    def take(cls, spec: KafkaReadSpec, partitions):
        with cls._lock:
            idle = cls._idle.get(cls._key(spec, partitions))
            consumer = idle.pop()[0] if idle else None
        if consumer is not None:
            return consumer
        return spec.connection.consumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                        isolation_level=spec.isolation_level, max_poll_records=2000,
                                        fetch_max_wait_ms=100, max_partition_fetch_bytes=4 * 1024 * 1024)

    @classmethod
    def give(cls, spec: KafkaReadSpec, partitions, consumer) -> None:
        now = time.monotonic()
        with cls._lock:
            cls._idle[cls._key(spec, partitions)].append((consumer, now))
            stale = [c for entries in cls._idle.values() for c, at in entries if now - at > cls.IDLE_CLOSE_S]
            for key in list(cls._idle):
                cls._idle[key] = [(c, at) for c, at in cls._idle[key] if now - at <= cls.IDLE_CLOSE_S]
        for old in stale:
            old.close(autocommit=False)


_MIN_MICROS = MIN_TIMESTAMP.micros


# The newest watermark each partition's reader reported in this process, for progress logs (transforms/progress.py).
PARTITION_WATERMARKS: dict = {}
# Per launched stream, its partitions' last reports in this process, (watermark, wall time): no split of the stream
# reports a watermark ahead of them (_aligned). Per launch, so that two jobs reading a topic never bound each other.
_REPORTS: dict = collections.defaultdict(dict)
# How long after a stream's first watermark in this process a partition that has not reported holds the others back
# (then it is taken to be read by another worker), and how long a report counts (a split gone elsewhere stops
# reporting; one the runner has not scheduled for a while has not).
FRESH_REPORT_S = 60.0
FORGET_REPORT_AFTER_S = 600.0
_FIRST_ASKED: dict = {}  # a launched stream → wall time a split of it was first asked for a watermark


@dataclass
class _PartitionClock:
    """Per partition, in plain microseconds: the watermark is asked for after every record."""
    newest: int = _MIN_MICROS  # newest element timestamp seen
    watermark: int = _MIN_MICROS
    at_end_since: float | None = None  # wall time since which every poll found the partition read to its end
    checked_at: float = 0.0  # wall time of the last such look
    idle_logged: str = ""  # how its idleness was last logged: "", "paced", "held" or "wall"


READ_BACK_S = 60.0  # at most this long to read back a resumed partition's recent event ids


class _KafkaReader(UnboundedReader):
    def __init__(self, source: "KafkaPartitionSource", mark: KafkaCheckpointMark | None):
        self.source = source
        self.spec = source.spec
        self.next_offsets: dict[Partition, int] = dict(mark.next_offsets) if mark else dict(source.start_offsets)
        self.stop = dict(self.spec.stop_offsets) if self.spec.stop_offsets is not None else None
        self.buffer: collections.deque = collections.deque()
        self.clocks: dict[Partition, _PartitionClock] = {tp: dataclasses.replace(clock)
                                                          for tp, clock in (mark.clocks if mark else ())}
        self.current: KafkaMessage | None = None
        self.current_timestamp: Timestamp = MIN_TIMESTAMP
        self.consumer = None
        self.next_discovery = 0.0
        self.broker_silent_since: float | None = None
        self.recent: dict[Partition, RecentEventIds] = {}  # each partition's recent event ids, from its first record

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> bool:
        for tp in self.next_offsets:
            self.clocks.setdefault(tp, _PartitionClock())
        return self.advance()

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close(autocommit=False)
            self.consumer = None

    def _consumer(self):
        """This reader's consumer, taken from the pool and positioned where the reader goes on."""
        if self.consumer is None:
            self.consumer = _ConsumerPool.take(self.spec, self.next_offsets)
            self._assign()
        return self.consumer

    def _release(self) -> None:
        if self.consumer is not None:
            _ConsumerPool.give(self.spec, self.next_offsets, self.consumer)
            self.consumer = None

    def _assign(self) -> None:
        from kafka import TopicPartition

        # Records already buffered are not fetched again: each partition resumes after its last buffered one.
        fetch_from = dict(self.next_offsets)
        for record in self.buffer:
            fetch_from[(record.topic, record.partition)] = record.offset + 1
        self.consumer.assign([TopicPartition(t, p) for t, p in sorted(fetch_from)])
        for tp, offset in fetch_from.items():
            self.consumer.seek(TopicPartition(*tp), offset)
            self.clocks.setdefault(tp, _PartitionClock())

    def _discover(self) -> None:
        """The discovery split takes on partitions created after launch, from their first offset."""
        if not self.source.discovers or time.monotonic() < self.next_discovery:
            return
        self.next_discovery = time.monotonic() + self.spec.discovery_interval_s
        known = dict(self.spec.known_partitions)
        new = {}
        consumer = self._consumer()
        consumer.topics()  # a fresh metadata fetch: a long-lived consumer's cache may predate the new partitions
        for topic in self.spec.topics:
            for partition in consumer.partitions_for_topic(topic) or ():
                if partition >= known.get(topic, 0) and (topic, partition) not in self.next_offsets:
                    new[(topic, partition)] = 0
        if new:
            log.info("picked up new partitions %s", sorted(new))
            self._release()  # pooled by its partitions: the new set takes its own
            self.next_offsets.update(new)

    # --- reading ---------------------------------------------------------------------------------------------
    def advance(self) -> bool:
        if not self.buffer:
            self._fill()
        while self.buffer:
            record = self.buffer.popleft()
            tp = (record.topic, record.partition)
            if self.stop is not None and record.offset >= self.stop.get(tp, 0):
                continue  # past the bounded end
            if self.spec.event_time is not None and tp not in self.recent:
                self.recent[tp] = recent_event_ids(self.spec.launch, tp, self.next_offsets[tp],
                                                   self.spec.dedupe_horizon, lambda first, end: self._read_back(
                                                       tp, first, end))
            self.next_offsets[tp] = record.offset + 1
            self.current = KafkaMessage(record.topic, record.partition, record.offset, record.timestamp,
                                        record.key, record.value, tuple(record.headers or ()))
            self.current_timestamp = self._timestamp(self.current)
            if tp in self.recent:  # read up to here, whatever the record became: the next reader resumes here
                self.recent[tp].next_offset = record.offset + 1
            clock = self.clocks[tp]
            clock.at_end_since = None
            if not isinstance(self.current.decoded, DeadLetter) and self.current_timestamp.micros > clock.newest:
                clock.newest = self.current_timestamp.micros
            return True
        return False

    def _fill(self) -> None:
        """Fetch the next records. A broker that stops answering (restarted, a network partition) is waited out:
        kafka-python reconnects by itself, and until it does this reader returns nothing, so the job neither
        fails nor moves its watermark on."""
        from kafka.errors import KafkaError

        try:
            self._fill_from_broker()
        except KafkaError as error:
            if self.broker_silent_since is None:
                self.broker_silent_since = time.monotonic()
                log.warning("Kafka does not answer (%s: %s); reading resumes when it does", type(error).__name__,
                            error)
            return
        if self.broker_silent_since is not None:
            log.warning("Kafka answers again after %.0f s", time.monotonic() - self.broker_silent_since)
            self.broker_silent_since = None

    def _fill_from_broker(self) -> None:
        from kafka import TopicPartition

        self._discover()
        if self.finished():
            return
        if not self.next_offsets:
            return  # a discovery split with nothing found yet
        batches = self._consumer().poll(timeout_ms=self.spec.poll_timeout_ms)
        for tp in sorted(batches):
            self.buffer.extend(batches[tp])
        if self.stop is None:
            self._look_at_ends({(tp.topic, tp.partition) for tp in batches})
        if self.stop is not None and not self.buffer:
            # Transaction markers and compaction leave offsets without records: positions tell the truth.
            for (topic, partition), stop in self.stop.items():
                if (topic, partition) in self.next_offsets:
                    position = self._consumer().position(TopicPartition(topic, partition))
                    self.next_offsets[(topic, partition)] = max(self.next_offsets[(topic, partition)],
                                                                min(position, stop))

    @property
    def _look_fresh_s(self) -> float:
        # Only a recent look speaks for the partition now; an older one may predate records it has not read.
        return self.spec.idle_after_s / 2

    def _look_at_ends(self, fetched: set) -> None:
        """Note which partitions this poll found read to their end. The end comes from the broker (ListOffsets),
        not from the last fetch's high watermark, which a short poll on a busy machine may not have refreshed."""
        from kafka import TopicPartition

        now = time.time()
        quiet = [TopicPartition(*tp) for tp in self.next_offsets if tp not in fetched]
        consumer = self._consumer()
        ends = consumer.end_offsets(quiet) if quiet else {}
        for tp in self.next_offsets:
            clock = self.clocks[tp]
            end = ends.get(TopicPartition(*tp))
            # The consumer's position passes transaction markers that never reach the reader as records.
            at_end = end is not None and consumer.position(TopicPartition(*tp)) >= end
            if not at_end:
                clock.at_end_since = None
            elif clock.at_end_since is None:
                clock.at_end_since = now
            clock.checked_at = now

    def _timestamp(self, message: KafkaMessage) -> Timestamp:
        if self.spec.event_time is not None:
            message.decoded = self.spec.event_time(message)
            if isinstance(message.decoded, dict):
                event_id = message.decoded["event_id"]
                if self.recent[(message.topic, message.partition)].seen(event_id, message.offset):
                    message.decoded = duplicate(message, event_id)  # counted once: the first delivery was
                else:
                    return timestamp_of(message.decoded["event_time"])
        if message.timestamp_ms is not None and message.timestamp_ms >= 0:
            return Timestamp(micros=message.timestamp_ms * 1000)
        return Timestamp.now()

    def _read_back(self, tp: Partition, first: int, end: int):
        """(offset, event id) of the partition's records from `first` up to `end`: the ids a reader resuming there
        remembers (transforms/dedupe.py). A consumer of its own, so the reader's position is untouched."""
        from kafka import TopicPartition

        consumer = self.spec.connection.consumer(group_id=None, enable_auto_commit=False,
                                                 auto_offset_reset="earliest",
                                                 isolation_level=self.spec.isolation_level)
        deadline = time.monotonic() + READ_BACK_S
        try:
            partition = TopicPartition(*tp)
            consumer.assign([partition])
            consumer.seek(partition, first)
            while consumer.position(partition) < end:
                if time.monotonic() > deadline:
                    log.warning("%s[%d]: read back only up to offset %d of %d in %.0f s: an event delivered again "
                                "across the gap counts twice", *tp, consumer.position(partition), end, READ_BACK_S)
                    return
                records = consumer.poll(timeout_ms=self.spec.poll_timeout_ms * 5).get(partition, [])
                if not records and consumer.position(partition) < end:
                    if consumer.end_offsets([partition])[partition] <= consumer.position(partition):
                        return  # the records before `end` are gone (a recreated topic): nothing to remember
                    continue
                for record in records:
                    if record.offset >= end:
                        return
                    outcome = self.spec.event_time(KafkaMessage(record.topic, record.partition, record.offset,
                                                                record.timestamp, record.key, record.value,
                                                                tuple(record.headers or ())))
                    if isinstance(outcome, dict):
                        yield record.offset, outcome["event_id"]
        finally:
            consumer.close(autocommit=False)

    def finished(self) -> bool:
        return self.stop is not None and all(self.next_offsets.get(tp, 0) >= stop
                                             for tp, stop in self.stop.items() if tp in self.next_offsets)

    # --- what Beam asks ----------------------------------------------------------------------------------------
    def get_current(self) -> KafkaMessage:
        return self.current

    def get_current_timestamp(self) -> Timestamp:
        return self.current_timestamp

    def get_watermark(self) -> Timestamp:
        if self.finished() and not self.buffer:
            return MAX_TIMESTAMP
        lag = int(self.spec.max_out_of_orderness_s * 1e6)
        now = time.time()
        if not self.clocks:
            return Timestamp(micros=self._discovery_watermark(now, lag))
        lowest = None
        for partition, clock in self.clocks.items():
            candidate = clock.newest - lag if clock.newest > _MIN_MICROS else _MIN_MICROS
            if (self.stop is None and clock.at_end_since is not None and now - clock.checked_at <= self._look_fresh_s
                    and now - clock.at_end_since >= self.spec.idle_after_s):
                idle_for = now - clock.at_end_since
                flush = self.spec.flush_after_idle_s is not None and idle_for >= self.spec.flush_after_idle_s
                wall = int(now * 1e6)
                if flush:
                    follows = wall
                elif clock.newest > _MIN_MICROS:  # event time goes on at the wall clock's pace, never past it
                    follows = min(clock.newest + int(idle_for * 1e6), wall)
                elif self.spec.flush_after_idle_s is None:  # never had a record: nothing to pace from
                    follows = wall
                else:  # ...and with a flush set it waits for that (a split whose reads have not begun must not
                    follows = None  # let the stage's watermark leap to today)
                how = "wall" if follows == wall else "paced" if follows else "held"
                if clock.idle_logged != how:
                    log.info("%s/%d idle (read to its end, quiet for %.0f s): its watermark %s", *partition, idle_for,
                             {"wall": "follows the wall clock", "paced": "goes on at the wall clock's pace",
                              "held": "waits for the flush"}[how])
                    clock.idle_logged = how
                if follows is not None:
                    candidate = max(candidate, follows - lag)
            else:
                clock.idle_logged = ""
            clock.watermark = max(clock.watermark, candidate)
            PARTITION_WATERMARKS[partition] = clock.watermark
            _REPORTS[self.spec.launch][partition] = (clock.watermark, now)
            lowest = clock.watermark if lowest is None else min(lowest, clock.watermark)
        return Timestamp(micros=lowest if self.stop is not None else self._aligned(lowest, now))

    def _discovery_watermark(self, now: float, lag: int) -> int:
        """A discovery split with nothing to read yet has the wall clock's event time, aligned (a stream that read a
        month's second half once stitched its identity links and fitted windows as if weeks had passed, from this
        split's 'now' alone)."""
        return self._aligned(int(now * 1e6) - lag - int(self.spec.idle_after_s * 1e6), now)

    def _aligned(self, own: int, now: float) -> int:
        """A stream's split reports no watermark ahead of any partition of its topics read in this process (their
        last reports), and holds while one has not reported yet, for at most FRESH_REPORT_S: a runner that loses
        sight of some splits' holds for a moment (Prism, as a backlog is replayed) would otherwise take the stage's
        watermark past records those splits have not read, and a touch expired before the order it belongs to
        was read (a restarted stream landed an order with one touch fewer than a backfill)."""
        waiting = now - _FIRST_ASKED.setdefault(self.spec.launch, now) < FRESH_REPORT_S
        reports = _REPORTS[self.spec.launch]
        bound = own
        for topic, count in self.spec.known_partitions:
            for partition in range(count):
                report = reports.get((topic, partition))
                if report is None:
                    if waiting:
                        return _MIN_MICROS
                elif now - report[1] <= FORGET_REPORT_AFTER_S:
                    bound = min(bound, report[0])
        return bound

    def get_checkpoint_mark(self) -> KafkaCheckpointMark:
        # Beam asks at the end of each bundle; the split's next bundle may run on another processor.
        if self.finished():
            self.close()
        else:
            self._release()
        return KafkaCheckpointMark(self.spec, tuple(sorted(self.next_offsets.items())),
                                   tuple((tp, dataclasses.replace(clock)) for tp, clock in sorted(self.clocks.items())))


class KafkaPartitionSource(UnboundedSource):
    """The partitions one reader reads; `discovers` marks the split that takes on new partitions. `readers`: how
    many readers the launch source splits into, each one consumer fetching from its share of the partitions (None:
    one per partition)."""
    readers: int | None = None  # sources pickled before it existed split one per partition

    def __init__(self, spec: KafkaReadSpec, start_offsets: Offsets, discovers: bool = False,
                 readers: int | None = None):
        self.spec = spec
        self.start_offsets = start_offsets
        self.discovers = discovers
        self.readers = readers

    def split(self, desired_num_splits, options=None):
        if len(self.start_offsets) + self.discovers <= 1:
            return [self]  # already one partition, or the discovery split itself
        readers = min(self.readers or len(self.start_offsets), len(self.start_offsets))
        if readers == 1 and not self.discovers:
            return [self]  # one reader's share
        # A runner resumes a split's reads one after another within a bundle: each reads up to its bundle time
        # before the next begins, so the fewer splits a worker holds, the sooner each partition is read again.
        splits = [KafkaPartitionSource(self.spec, self.start_offsets[i::readers], readers=1) for i in range(readers)]
        if self.discovers:
            splits.append(KafkaPartitionSource(self.spec, (), discovers=True))
        return splits

    def create_reader(self, options, checkpoint_mark):
        return _KafkaReader(self, checkpoint_mark)

    def get_checkpoint_mark_coder(self):
        return coders.PickleCoder()

    def default_output_coder(self):
        return coders.PickleCoder()

    def __repr__(self):
        return f"KafkaPartitionSource({[tp for tp, _ in self.start_offsets]}, discovers={self.discovers})"


def resolve_launch(connection: KafkaConnection, topics: tuple[str, ...], start: StartAt, bounded: bool,
                   stop_offsets: dict[Partition, int] | None = None, group_id: str | None = None):
    """Partitions, start offsets and (bounded) end offsets as the cluster has them now: the launch snapshot."""
    from kafka import TopicPartition

    consumer = connection.consumer(group_id=group_id, enable_auto_commit=False)
    try:
        partitions = []
        counts = []
        for topic in topics:
            ids = sorted(consumer.partitions_for_topic(topic) or ())
            if not ids:
                raise RuntimeError(f"topic {topic} does not exist at {connection.describe()}")
            counts.append((topic, len(ids)))
            partitions += [TopicPartition(topic, p) for p in ids]
        beginning = consumer.beginning_offsets(partitions)
        end = consumer.end_offsets(partitions)
        if start.kind == "earliest":
            chosen = beginning
        elif start.kind == "latest":
            chosen = end
        elif start.kind == "offsets":
            given = dict(start.offsets)
            chosen = {tp: given.get((tp.topic, tp.partition), beginning[tp]) for tp in partitions}
        elif start.kind == "timestamp":
            found = consumer.offsets_for_times({tp: start.timestamp_ms for tp in partitions})
            chosen = {tp: found[tp].offset if found.get(tp) else end[tp] for tp in partitions}
        elif start.kind == "committed":
            if not group_id:
                raise ValueError("starting from committed offsets needs a group id")
            chosen = {tp: consumer.committed(tp) if consumer.committed(tp) is not None else beginning[tp]
                      for tp in partitions}
        else:
            raise ValueError(f"unknown start {start.kind!r}")
        start_offsets = tuple(sorted(((tp.topic, tp.partition), chosen[tp]) for tp in partitions))
        stop = None
        if bounded:
            stop = dict(stop_offsets) if stop_offsets else {(tp.topic, tp.partition): end[tp] for tp in partitions}
            stop = tuple(sorted(stop.items()))
        return start_offsets, stop, tuple(counts)
    finally:
        consumer.close()


@dataclass(frozen=True)
class StoredPartition:
    """A partition the warehouse holds offsets of, as the cluster has it now (beginning and end None: not found)."""
    partition: Partition
    stored: int
    beginning: int | None
    end: int | None

    @property
    def unreadable(self) -> str | None:
        """Why a stream can never read up to the stored offset (and so would hold every commit), or None."""
        if self.end is None:
            return "the partition is not among the topics read (topic deleted, renamed, or another --topic-prefix)"
        if self.end < self.stored:
            return (f"the stored offset {self.stored:,} is beyond the partition's end {self.end:,} (topic deleted and "
                    f"recreated, or another cluster)")
        return None

    @property
    def history_deleted(self) -> bool:
        """Records before the partition's beginning are gone (retention): a replay cannot rebuild what they made."""
        return bool(self.beginning)


def stored_partitions(connection: KafkaConnection, topics, stored: dict[Partition, int]) -> list[StoredPartition]:
    """Each stored partition as the cluster has it now: where a stream resuming from these offsets stands."""
    from kafka import TopicPartition

    consumer = connection.consumer(enable_auto_commit=False)
    try:
        existing = [TopicPartition(topic, p) for topic in topics for p in consumer.partitions_for_topic(topic) or ()]
        beginning = {(tp.topic, tp.partition): o for tp, o in consumer.beginning_offsets(existing).items()}
        end = {(tp.topic, tp.partition): o for tp, o in consumer.end_offsets(existing).items()}
    finally:
        consumer.close()
    return [StoredPartition(partition, offset, beginning.get(partition), end.get(partition))
            for partition, offset in sorted(stored.items())]


class ReadFromKafka(beam.PTransform):
    """Kafka topics → PCollection of KafkaMessage (with `decoded` set when timestamps come from event time).

    bounded=True reads up to the end offsets at launch (or `stop_offsets`) and finishes: a backfill. With
    `whole_partitions` too (for a batch runner), each partition is read to its end in one DoFn call, not through
    Beam's unbounded-source machinery: no claim per record, no step to mark the output bounded, and bundles a
    runner can hand to several workers.

    Otherwise the partitions are split among `readers` readers (None: one per partition); a reader reads for at most
    `max_bundle_seconds` (or `max_records_per_bundle` records) per bundle, the time its records wait before they
    leave the read step. A stream gives each worker slot one reader: a runner reads a slot's splits one after
    another, so with a reader per partition each partition waited for all the others' bundles.
    """

    def __init__(self, connection: KafkaConnection, topics, *, start: StartAt = StartAt(), bounded: bool = False,
                 stop_offsets: dict[Partition, int] | None = None, event_time: EventDecoder | None = None,
                 group_id: str | None = None, isolation_level: str = "read_uncommitted",
                 max_out_of_orderness_s: float = 5.0, idle_after_s: float = 10.0,
                 flush_after_idle_s: float | None = None, discovery_interval_s: float = 30.0,
                 poll_interval_s: float = 0.5, max_records_per_bundle: int = 10000, max_bundle_seconds: float = 0.5,
                 whole_partitions: bool = False, readers: int | None = None):
        super().__init__()
        if whole_partitions and not bounded:
            raise ValueError("whole_partitions reads a bounded read's partitions to their end: bounded=True only")
        self.whole_partitions = whole_partitions
        self.readers = readers
        self.connection = connection
        self.topics = tuple(topics)
        self.start = start
        self.bounded = bounded
        self.stop_offsets = stop_offsets
        self.options = dict(event_time=event_time, group_id=group_id, isolation_level=isolation_level,
                            max_out_of_orderness_s=max_out_of_orderness_s, idle_after_s=idle_after_s,
                            flush_after_idle_s=flush_after_idle_s, discovery_interval_s=discovery_interval_s)
        self.read_options = dict(poll_interval=poll_interval_s, max_records_per_bundle=max_records_per_bundle,
                                 max_read_time_seconds=max_bundle_seconds)

    def launch_source(self) -> KafkaPartitionSource:
        """The source as of now: partitions, start and (bounded) end offsets snapshotted from the cluster."""
        start_offsets, stop, counts = resolve_launch(self.connection, self.topics, self.start, self.bounded,
                                                     self.stop_offsets, self.options["group_id"])
        spec = KafkaReadSpec(self.connection, self.topics, start_offsets, stop, counts, **self.options,
                             launch=uuid.uuid4().hex)
        return KafkaPartitionSource(spec, start_offsets, discovers=not self.bounded, readers=self.readers)

    def expand(self, pbegin):
        if self.whole_partitions:
            # Offsets for lag monitoring ask the runner to finalize bundles, which Flink's batch mode refuses: only
            # a read with a consumer group asks.
            read = _ReadToEndCommitting() if self.options["group_id"] else _ReadToEnd()
            return (pbegin | "Partitions" >> beam.Create(self.launch_source().split(None))
                    | "ReadEach" >> beam.ParDo(read))
        messages = pbegin | "ReadPartitions" >> ReadFromUnboundedSource(self.launch_source(), **self.read_options)
        if not self.bounded:
            return messages
        # An UnboundedSource's output is unbounded even when it ends. This read ends at its stop offsets: marked
        # bounded, a backfill aggregates over all of it with Beam's default windowing, which batch runners group
        # on their fast path (FnApiRunner's general trigger driver took a quarter of a backfill's time). Marked
        # after a step (15.6 s a million records), not on the read's own output: Flink runs a pipeline whose every
        # PCollection is bounded in batch mode, which refuses the read's bundle finalization (apache/beam#19526).
        bounded = messages | "AllOfIt" >> beam.WindowInto(window.GlobalWindows())
        bounded.is_bounded = True
        return bounded


# The partitions a bounded read's whole-partition reader reads in this process: a progress line's total when
# worker processes share the read (transforms/progress.py).
PARTITIONS_READ_HERE: set = set()


class _ReadToEnd(beam.DoFn):
    """A bounded source's partitions → their messages up to the stop offsets, at their timestamps: a bundle's
    partitions read together by one reader, as the unbounded read's splits are (one consumer fetching from all of
    them), once the bundle has handed over every one. The reader is the unbounded read's own: the same consumer
    settings, decoding, event time and wait for a broker that does not answer."""

    def start_bundle(self):
        self.sources = []
        self.marks = []

    def process(self, source: KafkaPartitionSource):
        self.sources.append(source)

    def finish_bundle(self):
        if not self.sources:
            return
        spec = self.sources[0].spec
        starts = tuple(sorted(item for source in self.sources for item in source.start_offsets))
        PARTITIONS_READ_HERE.update(tp for tp, _ in starts)
        reader = KafkaPartitionSource(spec, starts).create_reader(None, None)
        try:
            available = reader.start()
            while available or not reader.finished():
                if available:
                    yield WindowedValue(reader.get_current(), reader.get_current_timestamp(), _GLOBAL)
                available = reader.advance()
        finally:
            reader.close()
        self.marks.append(reader.get_checkpoint_mark())


class _ReadToEndCommitting(_ReadToEnd):
    """_ReadToEnd that commits its consumer group's offsets (lag monitoring) once the runner has a bundle's output,
    as the unbounded read commits them when its checkpoints are finalized."""

    def process(self, source: KafkaPartitionSource, finalizer=beam.DoFn.BundleFinalizerParam):
        if not self.sources:  # finish_bundle gets no finalizer
            marks = self.marks
            finalizer.register(lambda: [mark.finalize_checkpoint() for mark in marks])
        super().process(source)
