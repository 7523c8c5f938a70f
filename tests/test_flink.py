"""`journeys stream` on the local Flink session cluster (real JobManager, TaskManager, job server, SDK worker pool)
and the real broker, into DuckDB:

- SIGTERM stops the job with a savepoint; a restart resumes from it. The records the first run had read are deleted
  from the topics before the restart, so a job that replayed the topics from their start could not end right.
- the fault suite on Flink: poison records of every bad-input class among the events, the TaskManager killed with
  SIGKILL three times mid-stream (the cluster's supervisor starts it again), the broker restarted once (with
  JOURNEYS_FLINK_FAULT_BROKER_RESTART set) and the launching process killed once: Flink restores the job from its checkpoints, the next launcher takes the running
  job over, the tables end equal to an uninterrupted run, every record counted once, and the dead letters are the
  malformed and poison records. Size: JOURNEYS_FLINK_FAULT_CUSTOMERS customers (about seven events each); CI runs a
  small one, deploy/bench/fault_suite.py the same test at 14,500 (about 100,000 events).
- an error that no TaskManager thread catches ends the TaskManager (the supervisor starts a new one) rather than
  leaving it running with the thread gone and the tasks waiting for what it would have delivered.
- a batch job's stages spread their subtasks over the SDK workers, and keep the same workers from stage to stage.
"""
import datetime as dt
from collections import Counter
import os
import random
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import apache_beam as beam
import pytest

from pipelines.generate import GeneratorConfig, generate
from pipelines.generate.sinks import produce
from pipelines.kafka_topics import admin_client, ensure_topics
from streaming_job import (Sink, committed, dead_letter_reasons, ends_as, expected_tables, kill, restart_broker,
                           started_jobs, wait_for, with_poison)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.flink]
CONFIG = GeneratorConfig(customers=int(os.environ.get("JOURNEYS_FLINK_FAULT_CUSTOMERS", "80")), days=30, seed=61,
                         start=dt.datetime(2026, 7, 1, tzinfo=dt.timezone.utc))
# Set: the fault test also restarts the broker under the restored job (deploy/bench/fault_suite.py sets it). Off in
# CI: one CI run (2026-12-06, the machine shared with two benchmarks) ended with every record committed but the last
# orders never attributed within 7 minutes after the restart; not yet understood (the Prism suite's broker restart
# passes in CI).
BROKER_RESTART_ENV = "JOURNEYS_FLINK_FAULT_BROKER_RESTART"


@pytest.fixture
def sink(tmp_path, topic_prefix):
    return Sink("duckdb", tmp_path, topic_prefix)


@pytest.fixture
def start(topic_prefix, sink, flink_jobs):
    """start(run) → a `journeys stream --runner FlinkRunner` launcher; the cluster's jobs are cancelled after the
    test (flink_jobs)."""
    with started_jobs(topic_prefix, sink, "FlinkRunner") as start_run:
        yield start_run


def _log(sink, run) -> str:
    return (sink.tmp_path / f"{run}.log").read_text(errors="replace")


def _delete_read_records(kafka, snapshot) -> int:
    """Deletes every record below the stored offsets from the topics (as retention would); how many."""
    from kafka import TopicPartition

    offsets = {TopicPartition(topic, int(partition)): int(next_offset)
               for next_offset, partition, topic in snapshot["source_offsets"]}
    admin = admin_client(kafka)
    try:
        admin.delete_records(offsets)
    finally:
        admin.close()
    return sum(offsets.values())


def test_sigterm_stops_with_a_savepoint_and_the_restart_resumes_from_it(kafka, topic_prefix, sink, start):
    records = generate(CONFIG, b"k", malformed=0.02)
    expected = expected_tables(sink, CONFIG)
    half = len(records) // 2
    ensure_topics(kafka, prefix=topic_prefix)
    produce(records[:half], kafka, topic_prefix=topic_prefix)

    job = start("run")
    wait_for(lambda: committed(sink.snapshot("run")) == half, "the first half committed", timeout_s=300)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=180) == 0, _log(sink, "run")[-3000:]
    assert "with a savepoint at file:" in _log(sink, "run")

    deleted = _delete_read_records(kafka, sink.snapshot("run"))
    assert deleted == half
    produce(records[half:], kafka, topic_prefix=topic_prefix)
    job = start("run")
    ends_as(expected, sink, "run", job, len(records), timeout_s=420)
    restarted = _log(sink, "run").split("with a savepoint at")[-1]
    assert "resuming journeys-stream-" in restarted and "/savepoints/" in restarted
    assert "reading the topics from their start" not in restarted


def _taskmanager_pid(flink) -> int:
    return int((flink.state / "taskmanager.pid").read_text())


def _restarted_taskmanager(flink, killed: int) -> None:
    """The cluster's supervisor starts a new TaskManager (deploy/flink/flink.sh supervise)."""
    def new_one():
        try:
            pid = _taskmanager_pid(flink)
        except (OSError, ValueError):
            return False
        return pid != killed and os.path.exists(f"/proc/{pid}")
    wait_for(new_one, "the supervisor's new TaskManager", timeout_s=120)


@pytest.mark.faults
def test_poison_taskmanager_killed_three_times_a_broker_restart_and_the_launcher_killed_end_as_an_uninterrupted_run(
        kafka, flink, flink_jobs, topic_prefix, sink, start, record_property):
    records, corpus = with_poison(CONFIG, seed=61, malformed=0.02)
    record_property("records", len(records))  # deploy/bench/fault_suite.py reports it
    expected = expected_tables(sink, CONFIG)
    patience = max(300.0, len(records) / 100)  # seconds for a step that waits on the stream: it scales with the size
    chunks = [records[i * len(records) // 5:(i + 1) * len(records) // 5] for i in range(5)]
    ensure_topics(kafka, prefix=topic_prefix)
    produce(chunks[0], kafka, topic_prefix=topic_prefix)
    job = start("faulty")
    wait_for(lambda: committed(sink.snapshot("faulty")) > 0, "the first commit", timeout_s=patience)
    [job_id] = flink_jobs.running_jobs("journeys-stream-", prefix=True)
    # what the launcher's start watch looks for; the REST API's metrics lag the job by seconds (their fetcher's
    # interval), so a commit can come before they show the sources' first records
    wait_for(lambda: flink_jobs.unstarted_sources(job_id) == [], "the sources' first records in the metrics",
             timeout_s=60)
    shuffle = random.Random(67)

    for kill_number, chunk in enumerate(chunks[1:4]):
        produce(chunk, kafka, topic_prefix=topic_prefix)
        checkpoints = _completed_checkpoints(flink_jobs)
        wait_for(lambda: _completed_checkpoints(flink_jobs) > checkpoints, "a checkpoint", timeout_s=patience)
        time.sleep(shuffle.uniform(0, 8))  # mid-stream: part of the chunk checkpointed, committed, or neither
        killed = _taskmanager_pid(flink)
        os.kill(killed, signal.SIGKILL)
        checkpoints = _completed_checkpoints(flink_jobs)
        _restarted_taskmanager(flink, killed)
        wait_for(lambda: _completed_checkpoints(flink_jobs) > checkpoints, "a checkpoint after the restore",
                 timeout_s=patience)
        if kill_number == 1 and os.environ.get(BROKER_RESTART_ENV):  # the broker goes away and comes back
            restart_broker()

    kill(job)  # the launching process: the job runs on; the next launcher takes it over with a savepoint
    produce(chunks[4], kafka, topic_prefix=topic_prefix)
    job = start("faulty")
    ends_as(expected, sink, "faulty", job, len(records), timeout_s=max(420.0, patience))
    dead = dead_letter_reasons(sink, "faulty")
    assert len(dead) == sum(1 for r in records if r.malformed)  # the generated malformed ones and the corpus
    assert not Counter((bad.reason, bad.stage) for bad in corpus) - Counter(dead), "each poison record, with its reason"

    jobmanager_log = (flink.state / "logs" / "jobmanager.log").read_text(errors="replace")
    restores = [line for line in jobmanager_log.splitlines() if f"Restoring job {job_id} from Checkpoint" in line]
    assert len(restores) >= 3, restores  # each TaskManager loss: a restore from a checkpoint, not from offset 0
    assert "taking it over with a savepoint" in _log(sink, "faulty")
    record_property("restores_from_checkpoints", len(restores))


# A Java agent that starts a thread which throws an Error nothing catches; loaded into a running JVM by _ATTACH.
_UNCAUGHT_ERROR = """
public class UncaughtError {
    public static void agentmain(String args) {
        new Thread(() -> { throw new Error("journeys test: an error no thread catches"); },
                   "journeys-uncaught-error").start();
    }
}
"""
_ATTACH = """
public class Attach {
    public static void main(String[] args) throws Exception {
        com.sun.tools.attach.VirtualMachine vm = com.sun.tools.attach.VirtualMachine.attach(args[0]);
        vm.loadAgent(args[1]);
        vm.detach();
    }
}
"""


def _raise_uncaught_error_in(pid: int, tmp_path) -> None:
    (tmp_path / "UncaughtError.java").write_text(_UNCAUGHT_ERROR)
    (tmp_path / "Attach.java").write_text(_ATTACH)
    subprocess.run(["javac", "-d", str(tmp_path), str(tmp_path / "UncaughtError.java")], check=True, timeout=120)
    agent = tmp_path / "uncaught-error.jar"
    with zipfile.ZipFile(agent, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nAgent-Class: UncaughtError\n\n")
        jar.write(tmp_path / "UncaughtError.class", "UncaughtError.class")
    subprocess.run(["java", str(tmp_path / "Attach.java"), str(pid), str(agent)], check=True, timeout=120)


def test_an_error_no_taskmanager_thread_catches_ends_the_taskmanager_and_a_new_one_serves(flink, tmp_path):
    from pipelines.flink import Rest

    rest = Rest(flink.rest)
    registered = rest.taskmanagers()
    before = _taskmanager_pid(flink)
    _raise_uncaught_error_in(before, tmp_path)
    wait_for(lambda: not os.path.exists(f"/proc/{before}"), "the TaskManager's exit", timeout_s=60)
    _restarted_taskmanager(flink, before)
    # the JobManager lets the old one go (heartbeat timeout) and the new one registers: the next test has its slots
    wait_for(lambda: (now := rest.taskmanagers()) and not now & registered, "only the new TaskManager registered",
             timeout_s=120)
    log = (flink.state / "logs" / "taskmanager.log").read_text(errors="replace")
    assert "FATAL: Thread 'journeys-uncaught-error' produced an uncaught exception. Stopping the process" in log
    assert "journeys test: an error no thread catches" in log


def _completed_checkpoints(rest) -> int:
    """Completed checkpoints of the running stream (0 while it restarts)."""
    jobs = rest.running_jobs("journeys-stream-", prefix=True)
    return rest.checkpoints(jobs[0])["counts"]["completed"] if jobs else 0


def test_the_sdk_worker_pool_starts_its_workers_with_bounded_malloc(flink):
    """The workers inherit the pool's environment (worker_pool_main starts them without one of their own)."""
    from pipelines.runners import MALLOC_SETTINGS

    pool = int((flink.state / "workers.pid").read_text())
    environment = dict(entry.split("=", 1) for entry in
                       Path(f"/proc/{pool}/environ").read_text().split("\0") if "=" in entry)
    assert {name: environment.get(name) for name in MALLOC_SETTINGS} == {
        name: str(value) for name, value in MALLOC_SETTINGS.items()}


def test_a_batch_jobs_stages_each_run_on_both_sdk_workers_and_share_them(flink, tmp_path):
    """Each of three stages (groupings between them) runs its two subtasks on two different SDK workers, and the
    stages share the same two: a stage neither runs on one Python process while the other idles, nor waits for new
    workers to start."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.flink import LOCAL_SLOTS, runner_args

    folder = tmp_path / "workers"
    folder.mkdir()
    options = PipelineOptions(runner_args([], streaming=False, job_name=f"journeys-test-workers-{os.getpid()}"))
    with beam.Pipeline(options=options) as p:
        keyed = p | beam.Create(range(2_000)) | "Key" >> beam.Map(lambda n: (n % 100, n))
        seen = []
        for step in ("first", "second", "third"):
            # a branch that rejoins: Flink's optimizer then runs the stages one after another (blocking exchanges)
            doubled = keyed | f"Double{step}" >> beam.Map(lambda kv: (kv[0], -kv[1]))
            keyed = ((keyed, doubled) | f"Rejoin{step}" >> beam.Flatten() | f"Group{step}" >> beam.GroupByKey()
                     | f"Ungroup{step}" >> beam.FlatMap(lambda kv: [(kv[0], v) for v in kv[1] if v >= 0]))
            # which SDK worker process ran each element of this stage
            seen.append(keyed | f"Worker{step}" >> beam.Map(lambda _, step=step: (step, os.getpid())))
        _ = (seen | beam.Flatten() | beam.Distinct()
             | beam.Map(lambda noted, folder=str(folder): (Path(folder) / f"{noted[0]}-{noted[1]}").touch()))
    pids: dict[str, set[int]] = {}
    for noted in folder.iterdir():
        step, pid = noted.name.split("-")
        pids.setdefault(step, set()).add(int(pid))
    assert set(pids) == {"first", "second", "third"}
    assert all(len(workers) == LOCAL_SLOTS for workers in pids.values()), pids
    assert len(set().union(*pids.values())) == LOCAL_SLOTS, pids
