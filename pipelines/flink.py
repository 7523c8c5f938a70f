"""Apache Flink at the runner boundary: the local session cluster of deploy/flink/flink.sh, Beam's Flink options,
and the life cycle of a stream on Flink (resume from the newest checkpoint or savepoint, stop with a savepoint).

Where a job runs:
- the local session cluster, when `journeys flink up` started it (the default): submitted to its job server, SDK
  workers in its worker pool (EXTERNAL), so a job outlives the process that launched it;
- any Flink cluster: `--flink_master=HOST:PORT` (a job server of our jar starts for the submission);
- an embedded mini-cluster: `--flink_master=[local]` (SDK workers in this process, LOOPBACK).

A stream keeps its state in RocksDB and checkpoints it every `--checkpointing_interval` ms; checkpoints are kept
when the job is cancelled or fails, under a folder of the job's name. `journeys stream` on Flink resumes from the
newest of those checkpoints and savepoints, never from the topics' start, and SIGTERM stops it with a savepoint.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from apache_beam.options.pipeline_options import PipelineOptions

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "flink" / "flink.sh"
FLINK_VERSION = "1.19"
RUNNER = "FlinkRunner"
DEFAULT_CHECKPOINT_INTERVAL_MS = 10_000
# A stream's record waits in each stage until its bundle ends, at most this long (Beam's Flink default: 1,000 ms),
# and it crosses about four stages between the Kafka read and the writer.
STREAM_BUNDLE_MS = 250
STATE_CACHE_MB = 256  # per SDK worker
LOCAL_SLOTS = 2  # the local cluster's TaskManager slots and default parallelism (deploy/flink/flink.sh)
BATCH_WORKER_LINGER_MS = 30_000  # how long a batch job's idle SDK workers wait for its next stage
log = logging.getLogger("journeys.flink")


class LocalCluster:
    """Addresses and folders of deploy/flink/flink.sh's session cluster (its port layout, from one base port)."""

    def __init__(self, environ=os.environ):
        self.rest_port = int(environ.get("JOURNEYS_FLINK_PORT", "18081"))
        self.state = Path(environ.get("JOURNEYS_LOCAL_DIR", REPO / ".local")).resolve() / "flink"

    @property
    def rest(self) -> str:
        return f"http://localhost:{self.rest_port}"

    @property
    def job_endpoint(self) -> str:
        return f"localhost:{self.rest_port + 3}"

    @property
    def worker_pool(self) -> str:
        return f"localhost:{self.rest_port + 6}"

    @property
    def job_server_jar(self) -> Path:
        return self.state / "beam-flink-job-server.jar"

    def running(self) -> bool:
        return subprocess.run([str(SCRIPT), "status"], stdout=subprocess.DEVNULL, check=False).returncode == 0

    def fetch(self) -> Path:
        """The job-server jar, built on first use (an embedded mini-cluster or a remote master needs it)."""
        if not self.job_server_jar.exists():
            subprocess.run([str(SCRIPT), "fetch"], check=True, stdout=subprocess.DEVNULL)
        return self.job_server_jar


class FlinkStateOptions(PipelineOptions):
    """Beam's Java FlinkPipelineOptions that the launcher sets, declared to Python too: the portable runner sends
    them to the job server either way, but logs undeclared ones as 'unparseable' first."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--checkpointing_interval", type=int, help="ms between Flink checkpoints")
        parser.add_argument("--state_backend", help="rocksdb or filesystem (Beam 2.62 knows no other)")
        parser.add_argument("--state_backend_storage_path", help="where checkpoints are written")
        parser.add_argument("--externalized_checkpoints_enabled", action="store_true", default=None)
        parser.add_argument("--retain_externalized_checkpoints_on_cancellation", action="store_true", default=None)
        parser.add_argument("--savepoint_path", help="resume from this savepoint or retained checkpoint")
        parser.add_argument("--finish_bundle_before_checkpointing", type=lambda text: text.lower() == "true",
                            help="true: a checkpoint waits for the open bundles to finish, so none of their output "
                                 "is buffered in it")
        parser.add_argument("--max_bundle_time_mills", type=int,
                            help="ms at most that a bundle stays open (Beam's Flink option; spelt so by Beam)")


def parallelism(options) -> int:
    """The job's parallelism: Beam's --parallelism, else the local cluster's default."""
    from apache_beam.options.pipeline_options import FlinkRunnerOptions

    chosen = options.view_as(FlinkRunnerOptions).parallelism
    return chosen if chosen and chosen > 0 else LOCAL_SLOTS


def given(beam_args: list[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in beam_args)


def runner_args(beam_args: list[str], streaming: bool, job_name: str | None = None,
                cluster: LocalCluster | None = None) -> list[str]:
    """Beam's Flink options for this job; what the user passed in beam_args wins."""
    cluster = cluster or LocalCluster()
    args = [f"--runner={RUNNER}", f"--flink_version={FLINK_VERSION}"]
    if not (given(beam_args, "flink_master") or given(beam_args, "job_endpoint")):
        if not cluster.running():
            raise SystemExit("FlinkRunner: the local Flink cluster is not running (start it: journeys flink up), "
                             "or pass --flink_master=HOST:PORT, or --flink_master=[local] for an embedded one")
        args += [f"--job_endpoint={cluster.job_endpoint}", "--environment_type=EXTERNAL",
                 f"--environment_config={cluster.worker_pool}"]
    elif not given(beam_args, "job_endpoint") and not given(beam_args, "flink_job_server_jar"):
        args.append(f"--flink_job_server_jar={cluster.fetch()}")
    if job_name and not given(beam_args, "job_name"):
        args.append(f"--job_name={job_name}")
    if not given(beam_args, "max_cache_memory_usage_mb"):
        # Python's SDK caches no keyed state by default: each read would cross gRPC to the TaskManager
        args.append(f"--max_cache_memory_usage_mb={STATE_CACHE_MB}")
    if not given(beam_args, "sdk_worker_parallelism"):
        # One SDK worker per slot runs the stages' Python in parallel. A batch job's stages run one after another,
        # each over all its input (one worker process: 363.7 s a million events; two: 196.5 s); a stream's run
        # together (one worker at 1,000 events/s: 724 records/s over the run, two: 827).
        args.append(f"--sdk_worker_parallelism={LOCAL_SLOTS}")
    if not streaming and not given(beam_args, "environment_cache_millis"):
        # Beam releases a job's SDK workers as soon as no stage holds them: in batch mode, between stages, and the
        # next stage waits for new ones to start. Kept this long, the job's stages share the same workers.
        args.append(f"--environment_cache_millis={BATCH_WORKER_LINGER_MS}")
    if streaming:
        args.append("--streaming")
        defaults = {"checkpointing_interval": str(DEFAULT_CHECKPOINT_INTERVAL_MS), "state_backend": "rocksdb",
                    # Output a checkpoint buffers is restored by the index of its output tag, which in a resubmitted
                    # job need not name the same output: after a restore from a savepoint, the rows one firing
                    # computed for retention_cohorts reached social_impact's step and the other way round (both
                    # crashed). Bundles finished before the barrier leave nothing buffered.
                    "finish_bundle_before_checkpointing": "true",
                    "max_bundle_time_mills": str(STREAM_BUNDLE_MS),
                    # a folder per job name: the newest checkpoint of this stream is found there after a crash
                    "state_backend_storage_path": (cluster.state / "checkpoints" / job_name).as_uri()
                    if job_name else None}
        args += [f"--{k}={v}" for k, v in defaults.items() if v and not given(beam_args, k)]
        args += ["--externalized_checkpoints_enabled", "--retain_externalized_checkpoints_on_cancellation"]
    return args


def savepoint_dir(job_name: str, cluster: LocalCluster | None = None) -> Path:
    return (cluster or LocalCluster()).state / "savepoints" / job_name


def newest_snapshot(job_name: str, cluster: LocalCluster | None = None) -> Path | None:
    """The newest completed checkpoint or savepoint of this job name: a folder that holds `_metadata`."""
    cluster = cluster or LocalCluster()
    roots = [cluster.state / "checkpoints" / job_name, savepoint_dir(job_name, cluster)]
    found = [m.parent for root in roots if root.exists() for m in root.glob("**/_metadata")]
    return max(found, key=lambda p: (p / "_metadata").stat().st_mtime, default=None)


class StopFellBack(Exception):
    """A job was cancelled, not stopped with a savepoint."""


class Rest:
    """The few calls of Flink's REST API a launcher needs."""

    def __init__(self, base: str):
        self.base = base.rstrip("/")

    def _call(self, path: str, body: dict | None = None, method: str | None = None) -> dict:
        request = urllib.request.Request(self.base + path, method=method or ("POST" if body is not None else "GET"),
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def taskmanagers(self) -> set[str]:
        """The ids of the TaskManagers registered with the cluster."""
        return {tm["id"] for tm in self._call("/taskmanagers")["taskmanagers"]}

    def running_jobs(self, name: str, prefix: bool = False) -> list[str]:
        """The jobs of this name (with prefix: of every name that starts with it) that have not ended."""
        try:
            jobs = self._call("/jobs/overview")["jobs"]
        except OSError:  # no cluster answers there (an embedded mini-cluster lives only while its job runs)
            return []
        return [j["jid"] for j in jobs if (j["name"].startswith(name) if prefix else j["name"] == name)
                and j["state"] in ("CREATED", "RUNNING", "RESTARTING", "INITIALIZING", "RECONCILING", "FAILING")]

    def stop_with_savepoint(self, job_id: str, directory: Path, timeout_s: float = 300.0) -> str:
        """Stop a job with a savepoint (sources stop, state is written, the job finishes); its location."""
        trigger = self._call(f"/jobs/{job_id}/stop", {"targetDirectory": directory.as_uri(), "drain": False})
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            status = self._call(f"/jobs/{job_id}/savepoints/{trigger['request-id']}")
            if status["status"]["id"] == "COMPLETED":
                operation = status["operation"]
                if "failure-cause" in operation:
                    raise RuntimeError(f"savepoint of {job_id} failed: {operation['failure-cause'].get('class')}: "
                                       f"{operation['failure-cause'].get('stack-trace', '')[:500]}")
                return operation["location"]
            time.sleep(0.5)
        raise TimeoutError(f"no savepoint of {job_id} within {timeout_s} s")

    def stop(self, job_id: str, job_name: str, savepoint_timeout_s: float) -> str:
        """Stop a job with a savepoint, where the next start of `job_name` resumes: its location. When the savepoint
        fails or does not complete within savepoint_timeout_s (its barrier stuck behind a backlog), cancel the job
        instead: its retained checkpoints stay, and the next start resumes from the newest. Raises StopFellBack,
        after the cancel, to say so."""
        try:
            return self.stop_with_savepoint(job_id, savepoint_dir(job_name), savepoint_timeout_s)
        except (TimeoutError, RuntimeError) as error:
            self.cancel(job_id)
            deadline = time.time() + 120
            while job_id in self.running_jobs(job_name) and time.time() < deadline:
                time.sleep(0.5)
            raise StopFellBack(f"{error}: cancelled it instead; a restart resumes from its newest retained "
                               f"checkpoint, {newest_snapshot(job_name) or 'none yet'}") from error

    def checkpoints(self, job_id: str) -> dict:
        return self._call(f"/jobs/{job_id}/checkpoints")

    def unstarted_sources(self, job_id: str) -> list[str]:
        """Stages fed by an Impulse that have passed nothing on (yet): a splittable source (the Kafka read, the
        ticker) that has not started. Healthy ones pass on their splits at once (the Kafka read one per partition).
        Only meaningful for a job started afresh: a restored Impulse does not fire again."""
        job = self._call(f"/jobs/{job_id}")
        if "nodes" not in job.get("plan", {}):  # a job still initialising shows no plan: nothing of it has started
            return [f"{job.get('name', job_id)} (no plan yet)"]
        impulses = {v["id"] for v in job["vertices"] if v["name"].startswith("Source: Impulse")}
        fed = {n["id"] for n in job["plan"]["nodes"] if any(i["id"] in impulses for i in n.get("inputs", ()))}
        return [v["name"] for v in job["vertices"] if v["id"] in fed and v["metrics"].get("write-records", 0) == 0]

    def cancel(self, job_id: str) -> None:
        self._call(f"/jobs/{job_id}?mode=cancel", method="PATCH")


def rest_address(beam_args: list[str], cluster: LocalCluster | None = None) -> str:
    """The REST address of the cluster a job runs on: --flink_master, else the local session cluster."""
    for arg in beam_args:
        if arg.startswith("--flink_master=") and not arg.endswith(("[local]", "[auto]")):
            master = arg.split("=", 1)[1]
            return master if master.startswith("http") else f"http://{master}"
    return (cluster or LocalCluster()).rest


class StartWatch(threading.Thread):
    """Cancels a freshly started job whose splittable sources did not start within `timeout_s`, for the launcher to
    submit it again. Beam 2.62's portable Flink runner now and then swallows the Impulse element that starts a
    splittable DoFn (seen about once in fifteen starts here: the job runs, reads nothing, and never will)."""

    def __init__(self, rest: Rest, name: str, timeout_s: float = 60.0, poll_s: float = 5.0):
        super().__init__(daemon=True, name="flink-start-watch")
        self.rest, self.name, self.timeout_s, self.poll_s = rest, name, timeout_s, poll_s
        self.stopped = threading.Event()
        self.cancelled: list[str] = []  # the stages that did not start, once it cancelled the job
        self.job_id: str | None = None

    def run(self):
        deadline = time.time() + self.timeout_s
        while not self.stopped.wait(self.poll_s):
            jobs = self.rest.running_jobs(self.name)
            if not jobs:
                continue  # not submitted yet
            try:
                stuck = self.rest.unstarted_sources(jobs[0])
            except OSError:
                continue
            if not stuck:
                return  # its sources run: nothing more to watch
            if time.time() > deadline:
                log.warning("%s: %s never started (a known Beam 2.62 portable-runner fault); cancelling the job "
                            "to submit it again", self.name, ", ".join(stuck))
                self.cancelled, self.job_id = stuck, jobs[0]
                self.rest.cancel(jobs[0])
                return

    def stop(self):
        self.stopped.set()
