"""`journeys stream`: Kafka → decode → journey tables → the warehouse, continuously.

    journeys stream --warehouse .local/warehouse/journeys.duckdb        (on the cluster of `journeys flink up`)

Every `--commit-every-s` the rows that changed pass the data-quality row gate and are upserted together with the
offsets read so far, in one commit; the tables are validated (dq_results, alerts) and, unless a block-severity
expectation failed, a copy is published for BI readers (DuckDB). Tables over all of history (customers, cohorts, social impact)
are re-emitted every `--update-every-s`.

On Flink (the default) the per-customer state and the read positions live in RocksDB and are checkpointed: a
restarted job resumes from the newest checkpoint or savepoint of its name (pipelines/flink.py), SIGTERM stops it with
a savepoint, and a launcher started while its job still runs takes the job over (savepoint, then resume). On the
local runners (Prism) state lives in memory: a restarted job replays the topics from their start. Either way the
writer holds its commits until it has read past what the warehouse holds (transforms/warehouse.py): after a crash,
even SIGKILL, the tables end as if it had never stopped. Runs until stopped (Ctrl-C or SIGTERM); on the local
runners it exits 4 when the runner stops handing out work (transforms/liveness.py), for a supervisor to restart it.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import signal
import sys
from pathlib import Path

import apache_beam as beam

import schemas
from pipelines import flink
from pipelines.runners import (add_effects_args, add_kafka_pipeline_args, add_quality_args, add_warehouse_args,
                               open_target, parse_with_beam_args, quality_config, required_pseudonymiser,
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
    decoder = EventDecoder.for_prefix(args.topic_prefix, pseudonyms=required_pseudonymiser(args))
    topics = [args.topic_prefix + t for t in schemas.TOPICS]
    # A consumer group only for lag monitoring: offsets are committed as Beam finalizes checkpoints, never read.
    readers = args.readers or (flink.parallelism(pipeline.options) if args.runner == flink.RUNNER else None)
    messages = pipeline | "Read" >> ReadFromKafka(connection, topics, event_time=decoder, group_id=args.group_id,
                                                  idle_after_s=args.idle_after_s,
                                                  flush_after_idle_s=args.flush_after_idle_s, readers=readers)
    _ = messages | "Progress" >> beam.ParDo(LogProgress(connection, None, args.log_every_s))
    tables = messages | "Tables" >> TablesFromMessages(decoder, TablesConfig(
        update_every_s=args.update_every_s, bootstrap_resamples=args.bootstrap_resamples,
        bootstrap_seed=args.bootstrap_seed))
    hold = args.hold_after_catch_up_s if args.hold_after_catch_up_s is not None else args.update_every_s
    return ((tables, messages)
            | "Land" >> WriteToWarehouse(warehouse_target(args), args.commit_every_s, hold, quality_config(args)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="journeys stream", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)  # Beam's --update is not our --update-every-s
    add_kafka_pipeline_args(parser)
    add_warehouse_args(parser)
    add_quality_args(parser)
    add_effects_args(parser)
    parser.add_argument("--commit-every-s", type=float, default=10.0, help="commit interval (default: %(default)s)")
    parser.add_argument("--update-every-s", type=int, default=60,
                        help="how often the all-of-history tables are re-emitted (default: %(default)s)")
    parser.add_argument("--hold-after-catch-up-s", type=float,
                        help="after a restart, how long commits wait once the replay has passed the stored offsets "
                             "(default: --update-every-s, so every table has been re-emitted in full)")
    parser.add_argument("--idle-after-s", type=float, default=10.0,
                        help="a partition read to its end and quiet this long is idle: its event time goes on at the "
                             "wall clock's pace from its newest record (default: %(default)s)")
    parser.add_argument("--flush-after-idle-s", type=float,
                        help="a partition idle this long is done up to the wall clock: replayed history completes "
                             "(every order attributed, every window fitted), and records that come later with older "
                             "event times count as late. Default: never (live equals batch however history arrives)")
    parser.add_argument("--readers", type=int,
                        help="Kafka consumers the topics' partitions are shared among (default: on Flink the job's "
                             "parallelism, one per slot; elsewhere one per partition)")
    parser.add_argument("--log-every-s", type=float, default=30.0, help="progress log interval")
    parser.add_argument("--group-id", default="journeys-stream", help="consumer group, for lag monitoring only")
    parser.add_argument("--stalled-after-s", type=float, default=300.0,
                        help="exit with code 4 when the commit step has not run this long (workers in this process "
                             "only: Prism); a supervisor restarts the job. 0: never (default: %(default)s)")
    parser.add_argument("--savepoint-timeout-s", type=float, default=300.0,
                        help="on Flink: how long a stop (SIGTERM, or a launcher taking a running job over) waits for "
                             "its savepoint; after that the job is cancelled and the next start resumes from its "
                             "newest retained checkpoint (default: %(default)s)")
    parser.add_argument("--forget-offsets", metavar="TOPIC[:PARTITION],...", type=lambda text: text.split(","),
                        default=[], help="drop the warehouse's stored offsets of these topics (or partitions) before "
                                         "starting: after a topic was deleted and recreated, or moved, the stream "
                                         "would otherwise wait for ever to read up to them")
    parser.add_argument("--from-scratch", action="store_true",
                        help="on Flink: ignore this job's checkpoints and savepoints and replay the topics")
    return parse_with_beam_args(parser, argv)


def _stop(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends the job like Ctrl-C: the runner it started is stopped on the way out


START_ATTEMPTS = 3


# The layout of the job's steps and state. A job whose layout changed cannot resume from an older one's checkpoints
# (its new steps would start without the history the old ones held): a new version is a new job name, whose first
# start replays the topics while the writer holds its commits until it passes what the warehouse stores.
# 2: whole tables kept as running totals per group.
# 3: daily attribution's revisions kept per order, not per order_attribution row; the writer's rows pending in batches.
# 4: a device's link and waiting sessions in one state cell.
# 5: the writer keeps its count of commits and the whole tables as it landed them.
# 6: what a customer contributes to every whole table in one state cell.
# 7: social_impact_effects, a whole table: the customers' cells hold no contribution to it yet.
STATE_VERSION = 7


def job_name(args, beam_args) -> str:
    """One name per stream (its topics and warehouse, and STATE_VERSION): its checkpoints, savepoints and running
    job are found by it."""
    for arg in beam_args:
        if arg.startswith("--job_name="):
            return arg.split("=", 1)[1]
    # The bootstrap's resamples and seed too: totals folded with other replicates would not add up.
    digest = hashlib.sha1(f"{STATE_VERSION}|{args.topic_prefix}|{warehouse_target(args)}|{args.bootstrap_resamples}|"
                          f"{args.bootstrap_seed}".encode()).hexdigest()[:10]
    return f"journeys-stream-{digest}"


# A stored partition can never be read up to: every commit would be held for ever. Not 3 or 4 (broker unreachable,
# stalled), which a supervisor answers with a restart: this one needs a person.
EXIT_CANNOT_RESUME = 5


def resumable(args) -> bool:
    """Whether the warehouse's stored offsets can be read up to on the cluster as it is now. A stream resuming
    from them holds its commits until it has read that far: a partition gone, or behind its stored offset, would
    hold them for ever. Those are named, with what to do; history deleted by retention is a warning."""
    from transforms.duckdb_warehouse import held_by_a_writer
    from transforms.kafka_source import stored_partitions

    target = warehouse_target(args)
    if isinstance(target, str) and not Path(target).exists():
        return True  # a first start: nothing stored
    try:
        warehouse = open_target(args)
    except Exception as error:  # noqa: BLE001 - the job itself says what is wrong with its warehouse
        if held_by_a_writer(error):
            log.info("%s is held by a running job: its stored offsets are not checked now", target)
        else:
            log.warning("the stored offsets could not be checked at launch (%s: %s)", type(error).__name__, error)
        return True
    try:
        if args.forget_offsets:
            forgotten = sorted(p for p in warehouse.offsets() if _named(p, args.forget_offsets))
            warehouse.forget_offsets(forgotten)
            for topic, partition in forgotten:
                log.warning("forgot the stored offset of %s[%d]: the stream no longer waits to read up to it",
                            topic, partition)
        stored = warehouse.offsets()
    finally:
        warehouse.close()
    topics = [args.topic_prefix + t for t in schemas.TOPICS]
    found = stored_partitions(KafkaConnection.from_env(env_file=args.kafka_env_file), topics, stored)
    unreadable = [p for p in found if p.unreadable]
    for p in unreadable:
        log.error("cannot resume %s[%d]: %s", *p.partition, p.unreadable)
    if unreadable:
        log.error("the stream would hold every commit until it read up to those offsets, which it never can. If "
                  "the topics were recreated or moved on purpose, start again with --forget-offsets %s (the rows "
                  "they made stay; their records, if read again, count again), or land into another warehouse.",
                  ",".join(sorted({p.partition[0] for p in unreadable})))
        return False
    deleted = [p for p in found if p.history_deleted]
    if deleted:
        log.warning("retention has deleted the first records of %s: a replay (a first start, --from-scratch, or a "
                    "runner without checkpoints) cannot rebuild the tables' history from these topics; resuming "
                    "from a checkpoint or savepoint needs only what follows it",
                    ", ".join(f"{t}[{n}] (from offset {p.beginning:,})" for p in deleted for t, n in [p.partition]))
    return True


def _named(partition, names: list[str]) -> bool:
    """--forget-offsets TOPIC names every partition of the topic; TOPIC:N only partition N."""
    topic, number = partition
    return any(name == topic or name == f"{topic}:{number}" for name in names)


def main(argv=None) -> int:
    args, beam_args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    if args.runner == flink.RUNNER:
        return run_on_flink(args, beam_args)
    if not resumable(args):
        return EXIT_CANNOT_RESUME
    if args.stalled_after_s:
        liveness.watch(args.stalled_after_s)
    try:
        return run_kafka_pipeline(build, args, beam_args, streaming=True)
    except KeyboardInterrupt:
        log.info("stopped; the warehouse holds every commit up to now, and a restart resumes from it")
        return 0


def run_on_flink(args, beam_args) -> int:
    name = job_name(args, beam_args)
    rest = flink.Rest(flink.rest_address(beam_args))
    if not flink.given(beam_args, "savepoint_path") and not args.from_scratch:
        for job_id in rest.running_jobs(name):
            log.info("job %s (%s) is still running: taking it over with a savepoint", job_id, name)
            _stop_job(rest, job_id, name, args.savepoint_timeout_s)
        snapshot = flink.newest_snapshot(name)
        if snapshot:
            log.info("resuming %s from %s (state and read positions as of then, not the topics' start)", name,
                     snapshot)
            beam_args = [*beam_args, f"--savepoint_path={snapshot.as_uri()}"]
        else:
            log.info("%s has no checkpoint or savepoint yet: reading the topics from their start", name)
    if not resumable(args):  # after a running job was taken over: until then it holds the warehouse
        return EXIT_CANNOT_RESUME
    for _ in range(START_ATTEMPTS):
        watch = flink.StartWatch(rest, name) if not flink.given(beam_args, "savepoint_path") else None
        if watch:
            watch.start()
        try:
            run_kafka_pipeline(build, args, beam_args, streaming=True, job_name=name)
        except KeyboardInterrupt:
            for job_id in rest.running_jobs(name):
                _stop_job(rest, job_id, name, args.savepoint_timeout_s)
            return 0
        except RuntimeError:  # the job server may report a job cancelled under it as failed
            if not (watch and watch.cancelled):
                raise
        finally:
            if watch:
                watch.stop()
        if not (watch and watch.cancelled):
            return 0
        # its checkpoints hold a source that never started: no restart may resume from them
        shutil.rmtree(flink.LocalCluster().state / "checkpoints" / name / watch.job_id, ignore_errors=True)
    log.error("%s: its sources did not start in %d attempts", name, START_ATTEMPTS)
    return 1


def _stop_job(rest: flink.Rest, job_id: str, name: str, savepoint_timeout_s: float) -> None:
    try:
        location = rest.stop(job_id, name, savepoint_timeout_s)
    except flink.StopFellBack as fallback:
        log.warning("%s", fallback)
    else:
        log.info("stopped %s with a savepoint at %s; a restart resumes from it", job_id, location)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
