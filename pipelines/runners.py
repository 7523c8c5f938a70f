"""Beam pipeline options for the runners this project supports, with the local pieces they need.

- DirectRunner: Beam 2.77's DirectRunner hands pipelines it can to Prism and would first download Prism from the
  internet; we pass our own build (--prism_location) so it never waits on a download. Without one it falls back to
  the in-process FnApiRunner, which runs a stream only as one batch.
- PrismRunner: Beam's local portable runner, built by deploy/local/prism.sh; SDK workers in this process (LOOPBACK).
- FlinkRunner: Apache Flink, the engine for streams and for scale (pipelines/flink.py: the local session cluster of
  `journeys flink up`, any remote cluster, or an embedded mini-cluster).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

from pipelines import flink

REPO = Path(__file__).resolve().parents[1]
DATAFLOW_RUNNER = "DataflowRunner"  # deploy/dataflow's Flex Template launches `journeys stream` on it
STREAMING_RUNNERS = ("FlinkRunner", "PrismRunner", "DirectRunner", DATAFLOW_RUNNER)
# Beam's in-process batch engine: a backfill's keyed state is replayed per key in memory there
# (transforms/keyed_replay.py), where Prism serves every state read over gRPC. Bounded reads only: not a stream.
BATCH_RUNNER = "FnApiRunner"
RUNNERS = (BATCH_RUNNER, *(r for r in STREAMING_RUNNERS if r != DATAFLOW_RUNNER))  # no backfill there yet
JOB_STREAM_DEADLINE_S = 10 * 365 * 24 * 3600


def parse_with_beam_args(parser, argv=None):
    """(our options, Beam's options): what `parser` does not know passes to Beam, if Beam knows it. Beam only warns
    about a flag it does not know, so a typo (`--bigquery-projet`) would run the job without the option."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    args, beam_args = parser.parse_known_args(argv)
    beams = _BeamArgumentParser(allow_abbrev=False)
    for options in {str(cls): cls for cls in PipelineOptions.__subclasses__()}.values():
        options._add_argparse_args(beams)  # noqa: SLF001 - how Beam itself collects every option it knows
    _, unknown = beams.parse_known_args(beam_args)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (neither this command's options, see --help, "
                     f"nor Beam's pipeline options)")
    return args, beam_args


def required_pseudonymiser(args):
    """The pseudonymiser of personal identifiers, from --pseudonym-key-file or the key the environment names; there
    is no default key."""
    from transforms.pseudonymise import KEY_ENV, KEY_FILE_ENV, Pseudonymiser, key_secret

    given = getattr(args, "pseudonym_key_file", None)
    key = key_secret({KEY_FILE_ENV: given} if given else None)
    if key is None:
        raise SystemExit(f"no pseudonym key: give --pseudonym-key-file, or set {KEY_FILE_ENV} to a file holding a "
                         f"secret (for one: python -c "
                         f"'import secrets; print(secrets.token_hex(32))' > FILE) or {KEY_ENV}. Customer, cookie and "
                         f"social ids are pseudonymised with it before anything lands.")
    try:
        key.reveal()  # an unreadable file fails here, at launch
    except OSError as error:
        raise SystemExit(f"the pseudonym key cannot be read: {error}") from None
    return Pseudonymiser(key)


def prism_path() -> Path:
    """The Prism binary of deploy/local/prism.sh, built on first use."""
    local = Path(os.environ.get("JOURNEYS_LOCAL_DIR", REPO / ".local"))
    path = local / "bin" / "prism"
    if not path.exists():
        subprocess.run([str(REPO / "deploy" / "local" / "prism.sh")], check=True, stdout=subprocess.DEVNULL)
    return path


def refuse_dynamic_splits() -> None:
    """Make this process's SDK workers decline Prism's dynamic split requests.

    Prism 2.77 splits a source bundle that makes no visible progress (ours, while Kafka is polled). We saw two
    failures follow: the job failing with "cannot convert float NaN to integer" (the SDK computing the split),
    and, in one run of four, keyed state downstream losing updates: a stitching step read an empty bag for a
    device whose 11 sessions it had stored (tests/test_journey_tables.py, broker mode). Declined splits cost
    only dynamic rebalancing, which LOOPBACK workers on one machine barely need. See apache/beam#35771.
    """
    from apache_beam.runners.worker import bundle_processor

    bundle_processor.DataInputOperation.try_split = _no_split


def _no_split(*_args, **_kwargs):
    return None


def runner_args(runner: str, streaming: bool = False, beam_args: list[str] = (), job_name: str | None = None
                ) -> list[str]:
    """Options for `runner` (what beam_args already sets wins). Prism's workers run in this process (LOOPBACK),
    which declines splits."""
    if runner not in (STREAMING_RUNNERS if streaming else RUNNERS):
        raise ValueError(f"runner {runner!r}: one of {', '.join(STREAMING_RUNNERS if streaming else RUNNERS)}")
    if runner == flink.RUNNER:
        return flink.runner_args(list(beam_args), streaming, job_name)
    if runner == DATAFLOW_RUNNER:  # workers run remotely, in --sdk_container_image: nothing to set up here
        return [f"--runner={runner}", *(["--streaming"] if streaming else [])]
    refuse_dynamic_splits()
    # Beam shares one Prism job server per process, made with the options of whichever pipeline came first: a
    # pipeline without --prism_location would leave it pointing at a download. Ours get their own server.
    args = [f"--runner={runner}", f"--prism_location={prism_path()}", "--experiments=disable_prism_server_singleton",
            # The runner's job-state and message streams to Prism carry this as a gRPC deadline: at the default
            # (300 s) every job that runs longer, a stream above all, dies with DEADLINE_EXCEEDED.
            f"--job_server_timeout={JOB_STREAM_DEADLINE_S}"]
    if runner == "PrismRunner":
        args.append("--environment_type=LOOPBACK")
    if streaming:
        args.append("--streaming")
    return args


def add_kafka_pipeline_args(parser, bounded: bool = False) -> None:
    """The options every pipeline reading our Kafka topics takes (Beam's own options pass through). A bounded
    read (a backfill) runs on Beam's in-process batch engine by default: several times faster than Prism here."""
    parser.add_argument("--runner", choices=RUNNERS if bounded else STREAMING_RUNNERS,
                        default=BATCH_RUNNER if bounded else flink.RUNNER,
                        help="Beam runner (default: %(default)s); FlinkRunner takes Beam's Flink options "
                             "(--flink_master, --parallelism, --checkpointing_interval, --state_backend, ...)")
    parser.add_argument("--topic-prefix", default="")
    parser.add_argument("--kafka-env-file", metavar="FILE")
    parser.add_argument("--pseudonym-key-file", metavar="FILE",
                        help="the secret key that pseudonymises customer, cookie and social ids before they land (a "
                             "text file; or a Secret Manager version); else JOURNEYS_PSEUDONYM_KEY_FILE or "
                             "JOURNEYS_PSEUDONYM_KEY. There is no default")


def run_kafka_pipeline(build, args, beam_args: list[str], streaming: bool = False, job_name: str | None = None,
                       batch_workers: int | None = None) -> int:
    """Run `build(pipeline, args, connection)` on the chosen runner until it finishes. `batch_workers`: FnApiRunner's
    worker processes (a backfill's), unless Beam's options choose."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from transforms.compact_coder import use_compact_coders
    from transforms.kafka_connection import KafkaConnection
    from transforms.state_sizing import use_cheap_state_sizing

    use_cheap_state_sizing()  # for DoFns run in this process: it may have imported transforms before Beam
    beam_args = list(beam_args)
    if args.runner == BATCH_RUNNER:
        return_freed_memory()
    if args.runner == BATCH_RUNNER and batch_workers and not any(a.startswith("--direct_") for a in beam_args):
        beam_args = worker_processes(batch_workers) + beam_args
    options = PipelineOptions(runner_args(args.runner, streaming, beam_args, job_name) + beam_args)
    if args.runner == BATCH_RUNNER:
        relay_worker_logs()
    if not streaming:
        # Batch only: a stream's state and checkpoints keep the coders they were written with.
        use_compact_coders()
    connection = KafkaConnection.from_env(env_file=args.kafka_env_file)
    with beam.Pipeline(options=options) as pipeline:
        build(pipeline, args, connection)
    return 0


# glibc's malloc, bounded for processes that pass many elements through many threads (the user's settings stand)
MALLOC_SETTINGS = {"MALLOC_ARENA_MAX": 2, "MALLOC_MMAP_THRESHOLD_": 128 * 1024}
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # mallopt's parameters (malloc.h)


def return_freed_memory() -> None:
    """glibc's malloc as MALLOC_SETTINGS has it, in this process and the worker processes it starts. By default
    glibc gives each thread that allocates an arena of its own (up to eight per core) and keeps the memory freed in
    each, and it raises its mmap threshold to the largest block freed so far (up to 32 MiB), after which such blocks
    come from those arenas too: Beam's gRPC, data-channel and bundle threads each kept what the elements they passed
    had used, and a worker's resident memory grew with the stages it had run, not with what it held. Two arenas
    (Python under the GIL gains nothing from more) and a fixed threshold, above which blocks are mapped and unmapped
    when freed, keep it to what is live. (Flink's SDK workers get the same from deploy/flink/flink.sh, which starts
    their pool.)"""
    import ctypes
    import ctypes.util

    for name, value in MALLOC_SETTINGS.items():
        os.environ.setdefault(name, str(value))  # read by glibc as each worker process starts
    libc = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(libc), "mallopt", None) if libc else None
    if mallopt:  # glibc; elsewhere (musl, macOS) there is nothing to set
        mallopt(M_ARENA_MAX, int(os.environ["MALLOC_ARENA_MAX"]))
        mallopt(M_MMAP_THRESHOLD, int(os.environ["MALLOC_MMAP_THRESHOLD_"]))


def worker_processes(count: int) -> list[str]:
    """FnApiRunner's options for `count` worker processes (one: in this process). Its workers share a
    backfill's read only because that read hands them whole partitions: through the unbounded source's machinery,
    several workers lost records (a backfill of 29,786 records landed no touchpoints and 208 of 3,000 customers)."""
    return [f"--direct_num_workers={count}"] + (["--direct_running_mode=multi_processing"] if count > 1 else [])


WORKER_LOGGER = "journeys.worker"
# Each worker process warns that objects registered in Beam's registries may not reach it: our pipelines register
# none (their coders travel in the job's graph).
UNUSED_REGISTRIES = "No semi_persistent_directory found"


def relay_worker_logs() -> None:
    """FnApiRunner's worker processes send their log records here, where Beam logs each as its whole proto, one
    line, under its job service's logger ("Worker: severity: INFO timestamp {...} message: ..."), and its INFO
    lines (progress, the commit's validation) fell below that logger's level. Each is logged as its message, its
    traceback after it: this project's under WORKER_LOGGER, a library's under its module's name, so that the levels
    set for this process (kafka-python's: errors only) hold for its workers too."""
    from apache_beam.runners.portability import local_job_service

    local_job_service.BeamFnLoggingServicer.Logging = _relay


def _relay(self, log_bundles, context=None):
    from apache_beam.runners.worker.log_handler import LOGENTRY_TO_LOG_LEVEL_MAP

    for bundle in log_bundles:
        for entry in bundle.log_entries:
            level = LOGENTRY_TO_LOG_LEVEL_MAP.get(entry.severity, logging.INFO)
            logger = logging.getLogger(_logger_name(entry.log_location))
            if logger.isEnabledFor(level) and not entry.message.startswith(UNUSED_REGISTRIES):
                logger.log(level, "%s%s", entry.message, f"\n{entry.trace}" if entry.trace else "")
    return iter([])


def _logger_name(location: str) -> str:
    """The logger for a worker's record from its location (path:line): WORKER_LOGGER for this project's code, the
    module's dotted name for an installed package's, the module's name for the standard library's."""
    path = location.rsplit(":", 1)[0]
    if "-packages/" in path:
        return path.split("-packages/", 1)[1].removesuffix(".py").replace("/", ".").removesuffix(".__init__")
    return WORKER_LOGGER if path.startswith(str(REPO)) else Path(path).stem


def add_warehouse_args(parser) -> None:
    """Where the tables land: a DuckDB file (default), or BigQuery when a project is given."""
    parser.add_argument("--warehouse", type=Path, default=Path(".local/warehouse/journeys.duckdb"),
                        help="DuckDB file (default: %(default)s); BI tools read its published copy")
    bigquery = parser.add_argument_group("BigQuery (instead of DuckDB)")
    bigquery.add_argument("--bigquery-project", help="land in this Google Cloud project's BigQuery")
    bigquery.add_argument("--bigquery-dataset", default="customer_journeys")
    bigquery.add_argument("--bigquery-location", default="US")
    bigquery.add_argument("--bigquery-key-file", metavar="FILE",
                          help="service-account key (default: Application Default Credentials)")
    bigquery.add_argument("--bigquery-endpoint", metavar="URL", help="an emulator's REST endpoint")
    bigquery.add_argument("--bigquery-published-dataset", metavar="DATASET",
                          help="the dataset BI tools read, refreshed after each commit that passes its checks "
                               "(default: <dataset>_published)")


def add_effects_args(parser) -> None:
    """social_impact_effects' bootstrap (transforms/social_impact_effects.py)."""
    from transforms.social_impact_effects import RESAMPLES, SEED

    effects = parser.add_argument_group("social impact intervals")
    effects.add_argument("--bootstrap-resamples", type=_at_least_zero, default=RESAMPLES,
                         help="bootstrap replicates behind social_impact_effects' confidence intervals; 0: no "
                              "intervals (default: %(default)s)")
    effects.add_argument("--bootstrap-seed", type=_at_least_zero, default=SEED,
                         help="seed of the bootstrap's per-customer weights (default: %(default)s)")


def _at_least_zero(text: str) -> int:
    import argparse

    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def add_quality_args(parser) -> None:
    """Data-quality settings (transforms/dq_suites.py QualityConfig). Alert URLs are secrets: environment or file."""
    quality = parser.add_argument_group("data quality (Great Expectations)")
    quality.add_argument("--max-event-age-hours", type=float, default=24.0,
                         help="fresh_events: the newest touch may be at most this old (default: %(default)s)")
    quality.add_argument("--max-dead-letter-rate", type=float, default=0.05,
                         help="dead_letter_rate: dead letters per record read, at most (default: %(default)s)")
    quality.add_argument("--data-docs-dir", type=Path, default=Path(".local/data_docs"),
                         help="where Great Expectations' Data Docs HTML goes (default: %(default)s)")
    quality.add_argument("--alert-webhook-file", metavar="FILE",
                         help="a file holding the Slack-compatible webhook URL for alerts (else the environment's "
                              "JOURNEYS_ALERT_WEBHOOK)")
    quality.add_argument("--gx-actions-file", metavar="FILE",
                         help="JSON list of Great Expectations actions run on each new incident (Slack, email, "
                              "Teams, …: GX's action configs; write secrets as ${ENV_VAR})")


def quality_config(args):
    from transforms.dq_suites import QualityConfig

    from transforms.secret import Secret

    from transforms.secret import SECRET_VERSION

    location = args.alert_webhook_file
    if location and not SECRET_VERSION.match(location):
        location = os.path.abspath(location)  # symbolic links kept: workers mount the same path
    webhook = Secret(file=location) if location else None
    if webhook:
        webhook.reveal()  # a missing or unreadable file fails at launch, not at the first alert
    return QualityConfig.from_env(max_event_age_hours=args.max_event_age_hours,
                                  max_dead_letter_rate=args.max_dead_letter_rate,
                                  data_docs_dir=str(args.data_docs_dir.resolve()) if args.data_docs_dir else None,
                                  webhook_url=webhook,
                                  gx_actions=gx_actions(args.gx_actions_file) if args.gx_actions_file else None)


def gx_actions(path) -> str:
    """The --gx-actions-file's JSON, checked at launch rather than at the first incident."""
    text = Path(path).read_text()
    actions = json.loads(text)
    if not isinstance(actions, list) or not all(isinstance(a, dict) and "type" in a and "name" in a for a in actions):
        raise SystemExit(f"{path}: expected a JSON list of Great Expectations action configs, each with type and name")
    return text


def open_target(args):
    from transforms.warehouse import open_warehouse

    return open_warehouse(warehouse_target(args))


def warehouse_target(args):
    """The DuckDB path (absolute: workers of a cluster run elsewhere), or a BigQueryTarget: what
    transforms.warehouse.open_warehouse takes."""
    from transforms.bigquery_warehouse import BigQueryTarget

    if args.bigquery_project:
        return BigQueryTarget(args.bigquery_project, args.bigquery_dataset, args.bigquery_location,
                              args.bigquery_key_file, args.bigquery_endpoint, args.bigquery_published_dataset)
    return str(Path(args.warehouse).resolve())
