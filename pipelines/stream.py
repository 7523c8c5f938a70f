"""`journeys stream`: Kafka → decode → journey tables → the warehouse, continuously.

    journeys stream --runner PrismRunner --warehouse .local/warehouse/journeys.duckdb

Every `--commit-every-s` the rows that changed pass the data-quality row gate and are upserted together with the
offsets read so far, in one commit; the tables are validated (dq_results, alerts) and, unless a block-severity
expectation failed, a copy is published for BI readers (DuckDB). Tables over all of history (customers, cohorts, social impact)
are re-emitted every `--update-every-s`. A restarted job replays the topics from their start to rebuild its
per-customer state and holds its commits until the replay has passed what the last run committed
(transforms/warehouse.py): after a crash, even SIGKILL, the tables end as if it had never stopped.
Runs until stopped (Ctrl-C or SIGTERM); exits 4 when its runner stops handing out work (transforms/liveness.py), for
a supervisor to restart it.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

import apache_beam as beam

import schemas
from pipelines.runners import (add_kafka_pipeline_args, add_quality_args, add_warehouse_args, quality_config,
                               run_kafka_pipeline, warehouse_target)
from transforms import liveness
from transforms.decode_events import EventDecoder
from transforms.journey_tables import TablesConfig, TablesFromMessages
from transforms.kafka_connection import KafkaConnection
from transforms.kafka_source import ReadFromKafka
from transforms.progress import LogProgress
from transforms.warehouse import WriteToWarehouse

log = logging.getLogger("journeys.stream")


def build(pipeline, args, connection: KafkaConnection):
    decoder = EventDecoder.for_prefix(args.topic_prefix)
    topics = [args.topic_prefix + t for t in schemas.TOPICS]
    # A consumer group only for lag monitoring: offsets are committed as Beam finalizes checkpoints, never read.
    messages = pipeline | "Read" >> ReadFromKafka(connection, topics, event_time=decoder, group_id=args.group_id,
                                                  idle_after_s=args.idle_after_s)
    _ = messages | "Progress" >> beam.ParDo(LogProgress(connection, None, args.log_every_s))
    tables = messages | "Tables" >> TablesFromMessages(decoder, TablesConfig(update_every_s=args.update_every_s))
    hold = args.hold_after_catch_up_s if args.hold_after_catch_up_s is not None else args.update_every_s
    return ((tables, messages)
            | "Land" >> WriteToWarehouse(warehouse_target(args), args.commit_every_s, hold, quality_config(args)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="journeys stream", description=__doc__.split("\n\n")[0])
    add_kafka_pipeline_args(parser)
    add_warehouse_args(parser)
    add_quality_args(parser)
    parser.add_argument("--commit-every-s", type=float, default=10.0, help="commit interval (default: %(default)s)")
    parser.add_argument("--update-every-s", type=int, default=60,
                        help="how often the all-of-history tables are re-emitted (default: %(default)s)")
    parser.add_argument("--hold-after-catch-up-s", type=float,
                        help="after a restart, how long commits wait once the replay has passed the stored offsets "
                             "(default: --update-every-s, so every table has been re-emitted in full)")
    parser.add_argument("--idle-after-s", type=float, default=10.0,
                        help="a partition without records this long follows the wall clock (default: %(default)s)")
    parser.add_argument("--log-every-s", type=float, default=30.0, help="progress log interval")
    parser.add_argument("--group-id", default="journeys-stream", help="consumer group, for lag monitoring only")
    parser.add_argument("--stalled-after-s", type=float, default=300.0,
                        help="exit with code 4 when the commit step has not run this long (workers in this process "
                             "only: Prism); a supervisor restarts the job. 0: never (default: %(default)s)")
    return parser.parse_known_args(argv)


def _stop(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends the job like Ctrl-C: the runner it started is stopped on the way out


def main(argv=None) -> int:
    args, beam_args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    if args.stalled_after_s:
        liveness.watch(args.stalled_after_s)
    try:
        return run_kafka_pipeline(build, args, beam_args, streaming=True)
    except KeyboardInterrupt:
        log.info("stopped; the warehouse holds every commit up to now, and a restart resumes from it")
        return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
