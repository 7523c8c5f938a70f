"""`journeys count`: is data flowing? Events per topic per event-time window, plus dead letters, from Kafka.

A small real pipeline on ReadFromKafka + DecodeEvents, for operators and for the source's own tests:

    journeys count --runner PrismRunner --streaming --window-seconds 3600 --out counts.jsonl \
                   --landed landed.jsonl --resume

--landed keeps, for every record and dead letter, where it came from (topic, partition, offset); --resume starts
each partition after the last offset landed there: a restarted job continues where the killed one stopped.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections import defaultdict

import apache_beam as beam
from apache_beam.transforms.window import FixedWindows

import schemas
from pipelines.runners import add_kafka_pipeline_args, parse_with_beam_args, run_kafka_pipeline
from transforms.decode_events import DecodeEvents, EventDecoder
from transforms.json_lines import AppendJsonLines, read_json_lines
from transforms.kafka_connection import KafkaConnection
from transforms.kafka_source import ReadFromKafka, StartAt

def resume_offsets(landed_path: str) -> dict[tuple[str, int], int]:
    """Next offset per partition after what --landed recorded (complete lines only: a kill may cut the last)."""
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    for row in read_json_lines(landed_path):
        key = (row["topic"], row["partition"])
        offsets[key] = max(offsets[key], row["offset"] + 1)
    return dict(offsets)


class _Coordinates(beam.DoFn):
    """Keeps each message's coordinates next to its outcome, so --landed can record both."""

    def __init__(self, decoder: EventDecoder):
        self.decoder = decoder

    def process(self, message):
        outcome = self.decoder.outcome(message)
        kind = "dead_letter" if not isinstance(outcome, dict) else self.decoder.logical_topic(message.topic)
        yield {"kind": kind, "topic": message.topic, "partition": message.partition, "offset": message.offset,
               "event_id": outcome.get("event_id") if isinstance(outcome, dict) else None,
               "reason": None if isinstance(outcome, dict) else outcome.reason}


def build(pipeline, args, connection: KafkaConnection):
    decoder = EventDecoder.for_prefix(args.topic_prefix)
    start = StartAt.at_offsets(resume_offsets(args.landed)) if args.resume and args.landed else StartAt()
    messages = pipeline | "Read" >> ReadFromKafka(
        connection, [args.topic_prefix + t for t in schemas.TOPICS], start=start, bounded=not args.streaming,
        event_time=decoder, idle_after_s=args.idle_after_seconds,
        # counts per window of arrival: a quiet partition is done up to now at once
        flush_after_idle_s=args.idle_after_seconds, group_id=args.group_id,
        max_out_of_orderness_s=args.max_out_of_orderness_seconds, discovery_interval_s=args.discovery_interval_seconds)
    if args.landed:
        _ = (messages | "Coordinates" >> beam.ParDo(_Coordinates(decoder))
             | "WriteLanded" >> beam.ParDo(AppendJsonLines(args.landed)))
    outputs = messages | "Decode" >> DecodeEvents(decoder)
    counts = []
    for name, events in outputs.items():
        counts.append(events | f"Window{name}" >> beam.WindowInto(FixedWindows(args.window_seconds))
                      | f"Key{name}" >> beam.Map(lambda _, name=name: (name, 1))
                      | f"Count{name}" >> beam.CombinePerKey(sum))
    rows = (counts | "All" >> beam.Flatten()
            | "Row" >> beam.ParDo(_CountRow()))
    if args.out:
        _ = rows | "WriteCounts" >> beam.ParDo(AppendJsonLines(args.out))
    else:
        _ = rows | "Print" >> beam.Map(lambda row: print(json.dumps(row), flush=True))
    return rows


class _CountRow(beam.DoFn):
    def process(self, element, window=beam.DoFn.WindowParam):
        topic, count = element
        yield {"topic": topic, "window_start": window.start.to_utc_datetime().isoformat(),
               "window_end": window.end.to_utc_datetime().isoformat(), "count": count,
               "emitted_at": dt.datetime.now(dt.timezone.utc).isoformat()}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="journeys count", description=__doc__.split("\n\n")[0])
    add_kafka_pipeline_args(parser)
    parser.add_argument("--streaming", action="store_true", help="keep reading (default: backfill to the end at launch)")
    parser.add_argument("--window-seconds", type=float, default=3600.0, help="event-time window length")
    parser.add_argument("--out", metavar="FILE", help="append the counts as JSON lines (default: print them)")
    parser.add_argument("--landed", metavar="FILE", help="append every record's topic/partition/offset as JSON lines")
    parser.add_argument("--resume", action="store_true", help="start after the offsets recorded in --landed")
    parser.add_argument("--group-id", help="commit offsets to this consumer group, for lag monitoring only")
    parser.add_argument("--idle-after-seconds", type=float, default=10.0,
                        help="a partition without records this long follows the wall clock (default: 10)")
    parser.add_argument("--max-out-of-orderness-seconds", type=float, default=5.0,
                        help="how far behind the newest event time the watermark stays (default: 5)")
    parser.add_argument("--discovery-interval-seconds", type=float, default=30.0,
                        help="how often a streaming job looks for new partitions (default: 30)")
    return parse_with_beam_args(parser, argv)


def main(argv=None) -> int:
    args, beam_args = parse_args(argv)
    return run_kafka_pipeline(build, args, beam_args, streaming=args.streaming)


if __name__ == "__main__":
    sys.exit(main())
