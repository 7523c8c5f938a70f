"""The Flink launcher's choices (pipelines/flink.py): where a job goes, which state options a stream gets, and which
checkpoint or savepoint a restart resumes from. No cluster needed."""
import os
import time

import pytest

from pipelines import flink


class Cluster(flink.LocalCluster):
    def __init__(self, tmp_path, up=True):
        super().__init__({"JOURNEYS_FLINK_PORT": "28081", "JOURNEYS_LOCAL_DIR": str(tmp_path)})
        self.up = up

    def running(self):
        return self.up

    def fetch(self):
        return self.job_server_jar


def test_a_stream_goes_to_the_local_cluster_with_durable_state(tmp_path):
    args = flink.runner_args([], streaming=True, job_name="journeys-stream-x", cluster=Cluster(tmp_path))
    assert "--job_endpoint=localhost:28084" in args
    assert "--environment_type=EXTERNAL" in args and "--environment_config=localhost:28087" in args
    assert "--state_backend=rocksdb" in args and "--checkpointing_interval=10000" in args
    assert "--finish_bundle_before_checkpointing=true" in args  # no bundle output buffered in a checkpoint
    assert "--sdk_worker_parallelism=2" in args  # one SDK worker per slot
    assert "--max_bundle_time_mills=250" in args  # a record waits at most this long in each stage
    assert f"--state_backend_storage_path={(tmp_path / 'flink' / 'checkpoints' / 'journeys-stream-x').as_uri()}" in args
    assert "--retain_externalized_checkpoints_on_cancellation" in args and "--job_name=journeys-stream-x" in args


def test_a_backfill_runs_one_sdk_worker_per_slot_too_and_no_checkpoints(tmp_path):
    args = flink.runner_args([], streaming=False, cluster=Cluster(tmp_path))
    assert "--sdk_worker_parallelism=2" in args and "--streaming" not in args
    stream_only = ("--checkpointing_interval", "--state_backend", "--max_bundle_time_mills")
    assert not any(a.startswith(stream_only) for a in args)
    given = flink.runner_args(["--sdk_worker_parallelism=1"], streaming=False, cluster=Cluster(tmp_path))
    assert not any(a.startswith("--sdk_worker_parallelism") for a in given)  # the user's own stands


def test_what_the_user_gives_wins(tmp_path):
    given = ["--flink_master=[local]", "--checkpointing_interval=500", "--job_name=mine"]
    args = flink.runner_args(given, streaming=True, job_name="journeys-stream-x", cluster=Cluster(tmp_path, up=False))
    assert not any(a.startswith(("--job_endpoint", "--environment_type", "--checkpointing_interval", "--job_name"))
                   for a in args)
    assert f"--flink_job_server_jar={tmp_path / 'flink' / 'beam-flink-job-server.jar'}" in args


def test_without_a_cluster_or_a_master_it_says_how_to_get_one(tmp_path):
    with pytest.raises(SystemExit, match="journeys flink up"):
        flink.runner_args([], streaming=False, cluster=Cluster(tmp_path, up=False))


def test_a_restart_resumes_from_the_newest_completed_checkpoint_or_savepoint(tmp_path):
    cluster = Cluster(tmp_path)
    assert flink.newest_snapshot("s", cluster) is None
    older = cluster.state / "checkpoints" / "s" / "job1" / "chk-9"
    unfinished = cluster.state / "checkpoints" / "s" / "job2" / "chk-3"  # no _metadata: still being written
    newer = cluster.state / "savepoints" / "s" / "savepoint-1"
    other = cluster.state / "checkpoints" / "t" / "job3" / "chk-1"  # another stream's
    for folder in (older, unfinished, newer, other):
        folder.mkdir(parents=True)
    now = time.time()
    for folder, age in ((older, 60), (newer, 30), (other, 0)):
        (folder / "_metadata").write_bytes(b"x")
        os.utime(folder / "_metadata", (now - age, now - age))
    assert flink.newest_snapshot("s", cluster) == newer


def test_the_rest_address_follows_the_master(tmp_path):
    cluster = Cluster(tmp_path)
    assert flink.rest_address(["--flink_master=flink-jm:8081"], cluster) == "http://flink-jm:8081"
    assert flink.rest_address(["--flink_master=[local]"], cluster) == "http://localhost:28081"


class FlinkRest:
    """Flink's REST answers for one job whose sources started (or not)."""

    def __init__(self, unstarted):
        self.unstarted, self.cancelled = unstarted, []

    def running_jobs(self, name, prefix=False):
        return [] if self.cancelled else ["job1"]

    def unstarted_sources(self, job_id):
        return self.unstarted

    def cancel(self, job_id):
        self.cancelled.append(job_id)


def test_a_job_whose_plan_flink_does_not_show_yet_counts_as_not_started():
    """Just after submission Flink's answer for a job has no plan nodes: its sources have not started (the question
    must not raise, or the launcher's watch and the tests that wait on it stop asking)."""
    rest = flink.Rest("http://localhost:1")
    rest._call = lambda path, body=None, method=None: {"jid": "j1", "name": "journeys-stream-x", "vertices": [],
                                                        "plan": {"jid": "j1", "name": "journeys-stream-x"}}
    assert rest.unstarted_sources("j1") == ["journeys-stream-x (no plan yet)"]


@pytest.mark.parametrize("unstarted, cancelled", [(["[4]Read/ReadPartitions/{Create, ReadUnbounded}"], ["job1"]),
                                                  ([], [])])
def test_a_fresh_job_whose_sources_never_start_is_cancelled_for_the_launcher_to_submit_again(unstarted, cancelled):
    rest = FlinkRest(unstarted)
    watch = flink.StartWatch(rest, "journeys-stream-x", timeout_s=0.2, poll_s=0.1)
    watch.start()
    watch.join(timeout=10)
    assert not watch.is_alive()
    assert rest.cancelled == cancelled and watch.cancelled == unstarted and watch.job_id == (cancelled or [None])[0]


class StuckSavepoint(flink.Rest):
    """Flink's REST answers for a running job whose savepoint never completes (its barrier behind a backlog)."""

    def __init__(self):
        super().__init__("http://flink")
        self.calls = []

    def _call(self, path, body=None, method=None):
        self.calls.append((method or ("POST" if body is not None else "GET"), path))
        if path == "/jobs/job1/stop":
            return {"request-id": "r1"}
        if path == "/jobs/job1/savepoints/r1":
            return {"status": {"id": "IN_PROGRESS"}}
        if path == "/jobs/overview":
            state = "CANCELED" if ("PATCH", "/jobs/job1?mode=cancel") in self.calls else "RUNNING"
            return {"jobs": [{"jid": "job1", "name": "journeys-stream-x", "state": state}]}
        return {}


def test_a_stop_whose_savepoint_does_not_come_cancels_the_job_and_names_the_checkpoint_a_restart_takes(
        tmp_path, monkeypatch):
    monkeypatch.setenv("JOURNEYS_LOCAL_DIR", str(tmp_path))
    checkpoint = tmp_path / "flink" / "checkpoints" / "journeys-stream-x" / "job1" / "chk-7"
    checkpoint.mkdir(parents=True)
    (checkpoint / "_metadata").write_bytes(b"x")
    rest = StuckSavepoint()
    with pytest.raises(flink.StopFellBack, match=f"within 0.3 s: cancelled it instead.*{checkpoint}"):
        rest.stop("job1", "journeys-stream-x", savepoint_timeout_s=0.3)
    assert ("PATCH", "/jobs/job1?mode=cancel") in rest.calls
    assert rest.running_jobs("journeys-stream-x") == []
