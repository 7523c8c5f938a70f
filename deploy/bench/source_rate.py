"""Backfill read+decode rate of ReadFromKafka on each runner vs a plain kafka-python + fastavro loop, in one run
on the same topics. A benchmark, not a test:

    .venv/bin/python deploy/bench/source_rate.py --customers 20000 --days 60 [--runners DirectRunner PrismRunner]

It produces the generated records to fresh topics (prefix srcbench<time>_) of the local broker first.
"""
from __future__ import annotations

import argparse
import io
import os
import struct
import time

import apache_beam as beam
import fastavro
from apache_beam.options.pipeline_options import PipelineOptions
from report import report
from topics import messages

import schemas
from pipelines.generate import GeneratorConfig, generate
from pipelines.generate.sinks import produce
from pipelines.kafka_topics import ensure_topics
from pipelines.runners import RUNNERS, runner_args
from transforms.decode_events import DecodeEvents, EventDecoder
from transforms.kafka_connection import KafkaConnection
from transforms.kafka_source import ReadFromKafka


def raw_loop(prefix: str) -> tuple[int, float]:
    """The floor: one consumer over every partition, Confluent framing stripped, fastavro schemaless decode."""
    started = time.perf_counter()
    readers = {prefix + t: schemas.latest(t).parsed for t in schemas.TOPICS}
    writers = {s.schema_id: s.parsed for s in schemas.registry().values()}
    decoded = 0
    for message in messages(prefix):
        (schema_id,) = struct.unpack(">I", message.value[1:5])
        fastavro.schemaless_reader(io.BytesIO(message.value[5:]), writers[schema_id], readers[message.topic])
        decoded += 1
    return decoded, time.perf_counter() - started


def pipeline_backfill(connection: KafkaConnection, prefix: str, runner: str) -> tuple[int, float]:
    decoder = EventDecoder.for_prefix(prefix)
    started = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions(runner_args(runner))) as pipeline:
        outputs = (pipeline | ReadFromKafka(connection, [prefix + t for t in schemas.TOPICS], bounded=True,
                                            event_time=decoder)
                   | DecodeEvents(decoder))
        _ = ([outputs[name] for name in outputs] | beam.Flatten() | beam.Map(lambda _: 1)
             | beam.CombineGlobally(sum).without_defaults()
             | beam.Map(lambda n: open(os.environ["SRC_BENCH_OUT"], "w").write(str(n))))
    return int(open(os.environ["SRC_BENCH_OUT"]).read()), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--days", type=float, default=60)
    parser.add_argument("--runners", nargs="+", default=list(RUNNERS), choices=RUNNERS)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    connection = KafkaConnection.from_env()
    prefix = f"srcbench{int(time.time())}_"
    records = generate(GeneratorConfig(customers=args.customers, days=args.days, seed=5), b"bench")
    ensure_topics(connection, prefix=prefix)
    produce(records, connection, topic_prefix=prefix)
    os.environ["SRC_BENCH_OUT"] = f"/tmp/{prefix}count"

    raw_n, raw_s = raw_loop(prefix)
    result = {"records": len(records),
              "raw_kafka_python_fastavro": {"records": raw_n, "seconds": round(raw_s, 2),
                                            "records_per_s": round(raw_n / raw_s)}}
    for runner in args.runners:
        n, seconds = pipeline_backfill(connection, prefix, runner)
        result[runner] = {"records": n, "seconds": round(seconds, 2), "records_per_s": round(n / seconds),
                          "ratio_to_raw": round((n / seconds) / (raw_n / raw_s), 3)}
    report(result, args.json)


if __name__ == "__main__":
    main()
