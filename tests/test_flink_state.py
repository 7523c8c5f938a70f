"""A polling splittable DoFn's checkpointed state stays bounded on the session cluster.

Beam 2.62's portable Flink runner kept every self-checkpoint of a splittable DoFn (each `defer_remainder`: our Kafka
read while a partition is quiet, PeriodicImpulse between firings) under a state name of its own and never cleared it
(apache/beam#27648), so a stream's checkpoints grew about 2 MiB a minute. Our job server is built with the runner's
residual state patched (deploy/flink/patch_sdf_residuals.py): a residual is removed when its timer fires. Here a
PeriodicImpulse defers a few hundred times between checkpoints taken every second; the state must not grow with them.
"""
import time
import uuid

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.periodicsequence import PeriodicImpulse
from apache_beam.utils.timestamp import Timestamp

from pipelines.flink import Rest, runner_args

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.flink]


def _state_bytes(rest: Rest, job_id: str, after: int = 0) -> tuple[int, int] | None:
    """(id, state size) of the newest completed checkpoint, if its id is above `after`."""
    latest = (rest.checkpoints(job_id).get("latest") or {}).get("completed")
    return (latest["id"], latest["state_size"]) if latest and latest["id"] > after else None


def _started(rest: Rest, name: str, options: PipelineOptions, attempts: int = 3) -> str:
    """Submits the job until its splittable source starts (as the stream launcher does: pipelines/flink.py)."""
    for _ in range(attempts):
        pipeline = beam.Pipeline(options=options)
        _ = (pipeline
             | "Poll" >> PeriodicImpulse(start_timestamp=Timestamp.now(), fire_interval=0.02)
             | "Spread" >> beam.Reshuffle()  # its own stage, so Flink counts the ticks it passes on
             | "Drop" >> beam.Filter(lambda _: False))
        pipeline.run()  # returns once submitted: the job runs on the cluster until cancelled
        job_id = _wait_for(lambda: (rest.running_jobs(name) or [None])[0], "the job", 60)
        try:
            _wait_for(lambda: not rest.unstarted_sources(job_id), "its source", 60)
            return job_id
        except AssertionError:
            rest.cancel(job_id)
            _wait_for(lambda: not rest.running_jobs(name), "the cancellation", 60)
    raise AssertionError(f"the source did not start in {attempts} submissions")


def _wait_for(probe, what: str, timeout_s: float):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"no {what} within {timeout_s} s")


def test_a_polling_splittable_dofn_keeps_its_checkpointed_state_bounded(flink, tmp_path):
    name = f"journeys-test-sdf-state-{uuid.uuid4().hex[:6]}"
    rest = Rest(flink.rest)
    # Checkpoints every 10 s (the default): with one a second the first bundle of the splittable DoFn was lost in
    # most starts here (the fault StartWatch in pipelines/flink.py handles for streams).
    options = PipelineOptions(runner_args([], streaming=True, job_name=name, cluster=flink)
                              + [f"--state_backend_storage_path={(tmp_path / 'checkpoints').as_uri()}"])
    try:
        job_id = _started(rest, name, options)
        # a restore could hand a bundle's buffered output to another output tag: none is buffered
        assert rest._call(f"/jobs/{job_id}/config")["execution-config"]["user-config"][
            "finishBundleBeforeCheckpointing"] == "true"
        # The second checkpoint is the baseline: the first one can be taken before every operator holds its steady
        # state (one CI run grew 32 KiB between the first and the seventh, with no residual kept).
        started = _wait_for(lambda: _state_bytes(rest, job_id), "a checkpoint", 120)
        first = _wait_for(lambda: _state_bytes(rest, job_id, after=started[0]), "a second checkpoint", 60)
        time.sleep(60)
        last = _state_bytes(rest, job_id)
        fired = sum(v["metrics"].get("write-records", 0) for v in rest._call(f"/jobs/{job_id}")["vertices"]
                    if "Poll" in v["name"])
    finally:  # whatever failed, no job of this test keeps the cluster's slots from the tests after it
        for running in rest.running_jobs(name):
            rest.cancel(running)
    assert last[0] - first[0] >= 5, (first, last)  # checkpoints kept coming
    assert fired >= 200, fired  # each bundle ends deferring the rest: a residual the runner stores
    # Unpatched, every residual stays (about 1.7 KiB each: megabytes in a minute). Now only the pending one does, and
    # the growth left is a small fraction of what the residuals alone would add.
    assert last[1] <= first[1] + 64 * 1024, (first, last)
