"""LogProgress: taps the source's messages and logs, every `every_s`, how far the job has read.

A backfill (end offsets known): records read of the total, partitions finished, rate and ETA. A stream: records
read, rate, lag per partition behind the topics' end offsets (asked from Kafka at each log line) and the source's
watermark. Counters are per worker process: the local runners (LOOPBACK) run every worker in the job's process;
where a backfill's worker processes share the read, each reports its own partitions.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import apache_beam as beam
from apache_beam.utils.timestamp import MIN_TIMESTAMP

from transforms.event_time import from_micros
from transforms.kafka_connection import KafkaConnection
from transforms.kafka_source import PARTITION_WATERMARKS, PARTITIONS_READ_HERE

log = logging.getLogger("journeys.progress")


class _Totals:
    lock = threading.Lock()
    read: dict = {}  # (topic, partition) → next offset read
    records = 0
    started = None
    last_log = 0.0
    records_at_last_log = 0


def progress_line(records: int, elapsed_s: float, interval_records: int, interval_s: float,
                  read: dict, end: dict | None, bounded: bool) -> str:
    """One log line; pure, so its arithmetic is tested without Kafka."""
    rate = interval_records / interval_s if interval_s > 0 else 0.0
    parts = [f"read {records:,} records", f"{rate:,.0f}/s (average {records / max(elapsed_s, 1e-9):,.0f}/s)"]
    if end:
        behind = {p: max(0, end[p] - read.get(p, 0)) for p in end}
        remaining = sum(behind.values())
        if bounded:
            total = records + remaining
            done = sum(1 for p in end if behind[p] == 0)
            eta = remaining / rate if rate > 0 else float("inf")
            parts += [f"{records / max(total, 1):.0%} of {total:,}", f"{done}/{len(end)} partitions done",
                      "ETA " + (f"{eta:,.0f} s" if eta != float("inf") else "unknown")]
        else:
            lagging = ", ".join(f"{t}/{p}={n}" for (t, p), n in sorted(behind.items()) if n) or "none"
            parts.append(f"lag {remaining:,} records ({lagging})")
    return "; ".join(parts)


def watermark_text(watermarks: dict) -> str:
    """The source's watermark for a stream's line: the lowest of its partitions'. A partition that has read nothing
    yet holds Beam's minimum timestamp, which no datetime can show: its line says so instead."""
    if not watermarks:
        return ""
    lowest = min(watermarks.values())
    if lowest <= MIN_TIMESTAMP.micros:
        return "; source watermark not yet set (a partition has read nothing)"
    return f"; source watermark {from_micros(lowest):%Y-%m-%d %H:%M:%S}Z"


class LogProgress(beam.DoFn):
    def __init__(self, connection: KafkaConnection, end_offsets: dict | None = None, every_s: float = 30.0):
        self.connection = connection
        self.end_offsets = end_offsets  # a backfill's; a stream asks Kafka at each log line
        self.every_s = every_s

    def process(self, message):
        now = time.time()
        with _Totals.lock:
            if _Totals.started is None:
                _Totals.started = _Totals.last_log = now
            partition = (message.topic, message.partition)
            _Totals.read[partition] = max(_Totals.read.get(partition, 0), message.offset + 1)
            _Totals.records += 1
            if now - _Totals.last_log < self.every_s:
                return
            interval = now - _Totals.last_log
            interval_records = _Totals.records - _Totals.records_at_last_log
            _Totals.last_log, _Totals.records_at_last_log = now, _Totals.records
            read, records, started = dict(_Totals.read), _Totals.records, _Totals.started
        end = self.end_offsets if self.end_offsets is not None else self._end_offsets(read)
        here = set(PARTITIONS_READ_HERE)
        if self.end_offsets is not None and here and here != set(end):
            end = {p: n for p, n in end.items() if p in here}  # worker processes share the read: this one's part
            line = f"worker {os.getpid()} ({len(end)} of {len(self.end_offsets)} partitions): "
        else:
            line = ""
        line += progress_line(records, now - started, interval_records, interval, read, end,
                              self.end_offsets is not None)
        if self.end_offsets is None:
            line += watermark_text(dict(PARTITION_WATERMARKS))
        log.info(line)

    def _end_offsets(self, read: dict) -> dict:
        from kafka import TopicPartition

        try:
            consumer = self.connection.consumer(enable_auto_commit=False)
            try:
                ends = consumer.end_offsets([TopicPartition(t, p) for t, p in read])
            finally:
                consumer.close()
            return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}
        except Exception as error:  # a progress line is not worth failing the job for
            log.warning("end offsets unavailable for the lag: %s", error)
            return {}
