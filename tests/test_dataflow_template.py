"""The Dataflow Flex Template of `journeys stream` (deploy/dataflow): its parameters are options the real parser
takes, and the job it launches is built by Beam's DataflowRunner here, without submitting it (--dry_run)."""
import argparse
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from pipelines import stream

DATAFLOW = Path(__file__).resolve().parents[1] / "deploy" / "dataflow"
METADATA = json.loads((DATAFLOW / "metadata.json").read_text())
PARAMETERS = {parameter["name"]: parameter for parameter in METADATA["parameters"]}
IMAGE = "europe-west1-docker.pkg.dev/journeys-dry-run/journeys/journeys-stream:test"
# What Beam's option checks take for real names; --dry_run keeps the runner from contacting Google Cloud.
DATAFLOW_OPTIONS = ["--runner=DataflowRunner", "--project=journeys-dry-run", "--region=europe-west1",
                    "--temp_location=gs://journeys-dry-run/tmp", f"--sdk_container_image={IMAGE}"]
# Options of `journeys stream` the template does not offer, and why: every other option must be a parameter.
NOT_ON_DATAFLOW = {
    "runner": "the template runs on Dataflow",
    "warehouse": "a DuckDB file on a worker's disk: the template lands in BigQuery",
    "data_docs_dir": "HTML on a worker's disk, gone with the worker",
    "bigquery_key_file": "workers authenticate as the job's service account",
    "bigquery_endpoint": "the BigQuery emulator",
    "stalled_after_s": "a watchdog for workers in the launching process (Prism)",
    "from_scratch": "Flink's checkpoints and savepoints",
    "forget_offsets": "a repair at launch, run once from an operator's shell",
    "savepoint_timeout_s": "Flink's stop with a savepoint (Dataflow drains or updates a job instead)",
}
# Values for parameters without a default, each matching the parameter's regexes.
EXAMPLES = {
    "kafka_env_file": "projects/journeys-dry-run/secrets/journeys-kafka/versions/latest",
    "pseudonym_key_file": "projects/journeys-dry-run/secrets/journeys-pseudonym-key/versions/1",
    "topic_prefix": "prod_",
    "bigquery_project": "journeys-dry-run",
    "bigquery_published_dataset": "journeys_bi",
    "hold_after_catch_up_s": "90",
    "flush_after_idle_s": "600",
    "readers": "4",
    "alert_webhook_file": "projects/journeys-dry-run/secrets/journeys-webhook/versions/3",
    "gx_actions_file": "projects/journeys-dry-run/secrets/journeys-gx-actions/versions/1",
}
# What those secret versions hold.
SECRETS = {"kafka_env_file": b"JOURNEYS_KAFKA_BOOTSTRAP=broker-1.internal:9092\n",
           "alert_webhook_file": b"https://hooks.example.com/services/T0/B0/x\n",
           "gx_actions_file": b'[{"type": "slack", "name": "on-call"}]\n',
           "pseudonym_key_file": b"a-pseudonym-key\n"}


def _load_launcher():
    spec = importlib.util.spec_from_file_location("dataflow_template_main", DATAFLOW / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


launcher = _load_launcher()


def _stream_parser() -> argparse.ArgumentParser:
    """The parser `journeys stream` builds inside parse_args."""
    parsers = []
    parse_known_args = argparse.ArgumentParser.parse_known_args

    def record(parser, *args, **kwargs):
        parsers.append(parser)
        return parse_known_args(parser, *args, **kwargs)

    with mock.patch.object(argparse.ArgumentParser, "parse_known_args", record):
        stream.parse_args([])
    return parsers[0]


def _options(parser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions if action.option_strings and action.dest != "help"}


def _example(name: str) -> str:
    return PARAMETERS[name].get("defaultValue") or EXAMPLES[name]


def _template_args(tmp_path, **values) -> list[str]:
    """What the launcher hands the parser for these parameters (every one by default), secrets read by a stub."""
    values = values or {name: _example(name) for name in PARAMETERS}
    versions = {EXAMPLES[name]: content for name, content in SECRETS.items()}
    argv = [f"--{name}={value}" for name, value in values.items()]
    return launcher.parser_args(argv, set(PARAMETERS), versions.__getitem__, tmp_path)


def test_the_metadata_is_what_the_dataflow_api_takes():
    from google.cloud import dataflow
    from google.protobuf import json_format

    json_format.Parse(json.dumps(METADATA), dataflow.TemplateMetadata.pb()())  # unknown or misspelled keys raise
    assert METADATA["streaming"] is True
    for name, parameter in PARAMETERS.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), "spelled like Beam's own options"
        assert parameter["label"] and parameter["helpText"] and parameter.get("regexes"), name
        for regex in parameter["regexes"]:
            assert re.search(regex, _example(name)), (name, regex)


def test_every_parameter_is_a_stream_option_and_every_stream_option_is_offered_or_left_out_on_purpose():
    options = _options(_stream_parser())
    for name in PARAMETERS:
        assert name in options and f"--{name.replace('_', '-')}" in options[name].option_strings, name
        assert name not in NOT_ON_DATAFLOW, name
    required = {dest for dest, action in options.items() if action.required}
    assert required <= set(PARAMETERS), "a required option must be a parameter"
    missing = set(options) - set(PARAMETERS) - set(NOT_ON_DATAFLOW)
    assert not missing, f"offer these in deploy/dataflow/metadata.json, or list them in NOT_ON_DATAFLOW: {missing}"


def test_defaults_are_the_parsers_and_only_kafka_bigquery_and_the_pseudonym_key_are_required():
    options = _options(_stream_parser())
    for name, parameter in PARAMETERS.items():
        action = options[name]
        if "defaultValue" in parameter:
            assert (action.type or str)(parameter["defaultValue"]) == action.default, name
        assert parameter.get("isOptional", False) == (
            name not in ("kafka_env_file", "bigquery_project", "pseudonym_key_file")), name


def test_the_parser_takes_every_parameter_as_the_launcher_passes_it(tmp_path):
    args, beam_args = stream.parse_args(_template_args(tmp_path))
    assert beam_args == []
    options = _options(_stream_parser())
    for name in PARAMETERS:
        if name in launcher.READ_WHERE_USED:  # its version, read through Secret Manager where it is used
            assert getattr(args, name) == EXAMPLES[name], name
        elif name in SECRETS:
            assert Path(getattr(args, name)).read_bytes() == SECRETS[name], name
        else:
            assert getattr(args, name) == (options[name].type or str)(_example(name)), name


def test_secrets_are_secret_manager_versions_read_at_launch_and_other_options_pass_through(tmp_path):
    for name in SECRETS:
        assert PARAMETERS[name]["regexes"] == [launcher.SECRET_VERSION.pattern], "never a value"
    beam = ["--project=journeys-dry-run", "--sdk_container_image=" + IMAGE, "--job_name=j"]
    passed = _template_args(tmp_path, kafka_env_file=EXAMPLES["kafka_env_file"], topic_prefix="prod_",
                            gx_actions_file=EXAMPLES["gx_actions_file"]) + beam
    assert passed == [f"--kafka-env-file={EXAMPLES['kafka_env_file']}", "--topic-prefix=prod_",
                      f"--gx-actions-file={tmp_path / 'gx_actions_file'}", *beam]
    assert (tmp_path / "gx_actions_file").read_bytes() == SECRETS["gx_actions_file"]  # read at launch only


def test_beams_update_option_reaches_beam():
    """Replacing a running job (`gcloud dataflow flex-template run --update`) hands the launcher Beam's --update."""
    assert stream.parse_args(["--update"])[1] == ["--update"]


def test_the_launcher_refuses_to_start_workers_without_the_template_image():
    with pytest.raises(SystemExit, match="sdk_container_image"):
        launcher.main(["--bigquery_project=journeys-dry-run", "--project=journeys-dry-run"])


def _with_gcloud(tmp_path, script: str, *args: str, **env: str) -> list[str]:
    """Runs a deploy/dataflow script with a gcloud that prints its arguments (and a Cloud Build config it is
    given), one a line."""
    gcloud = tmp_path / "gcloud"
    gcloud.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n'
                      'for arg; do case $arg in --config=*) cat "${arg#--config=}";; esac; done\n')
    gcloud.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "PROJECT": "journeys-dry-run",
           "REGION": "europe-west1", "BUCKET": "journeys-dry-run", **env}
    done = subprocess.run([str(DATAFLOW / script), *args], env=env, capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def test_build_makes_the_template_of_the_image_it_builds(tmp_path):
    printed = _with_gcloud(tmp_path, "build.sh", TAG="t1")
    image = "europe-west1-docker.pkg.dev/journeys-dry-run/journeys/journeys-stream:t1"
    assert f"    args: [build, --file=deploy/dataflow/Dockerfile, --tag={image}, .]" in printed
    assert [f"IMAGE={image}", "TEMPLATE=gs://journeys-dry-run/templates/journeys-stream-t1.json"] == printed[-2:]
    assert f"--image={image}" in printed and f"--metadata-file={DATAFLOW / 'metadata.json'}" in printed


def test_the_image_copies_what_the_repository_has():
    copied = [line.split()[1:-1] for line in (DATAFLOW / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ") and "--from=" not in line]
    root = DATAFLOW.parents[1]
    assert all((root / source).exists() for sources in copied for source in sources), copied
    assert {"setup.py", "constraints.txt", "deploy/dataflow/main.py", "deploy/dataflow/metadata.json"} <= \
        {source for sources in copied for source in sources}


def test_launch_passes_every_required_parameter_and_the_image(tmp_path):
    printed = _with_gcloud(tmp_path, "launch.sh", "--parameters=topic_prefix=prod_", IMAGE=IMAGE,
                           TEMPLATE="gs://journeys-dry-run/t.json", KAFKA_SECRET=EXAMPLES["kafka_env_file"],
                           PSEUDONYM_KEY_SECRET=EXAMPLES["pseudonym_key_file"])
    passed = dict(arg.removeprefix("--parameters=").split("=", 1) for arg in printed
                  if arg.startswith("--parameters="))
    assert passed["sdk_container_image"] == IMAGE and passed["topic_prefix"] == "prod_"
    assert {name for name, p in PARAMETERS.items() if not p.get("isOptional")} <= set(passed)
    for name, value in passed.items():
        assert all(re.search(regex, value) for regex in PARAMETERS.get(name, {}).get("regexes", [])), name


@pytest.fixture
def only_the_broker(kafka, monkeypatch):
    """Name lookups for anything but the broker fail: building the job must not reach Google Cloud."""
    allowed = {address.rsplit(":", 1)[0] for address in kafka.bootstrap_servers.split(",")}
    getaddrinfo = socket.getaddrinfo

    def lookup(host, *args, **kwargs):
        if host not in allowed:
            raise OSError(f"the dry run looked up {host}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)


@pytest.mark.integration  # the job's source reads the topics' partitions when the graph is built
def test_dataflow_builds_the_streaming_job_without_submitting_it(kafka, topic_prefix, tmp_path, only_the_broker):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.portability.api import beam_runner_api_pb2
    from google.cloud import dataflow

    from pipelines.kafka_topics import ensure_topics

    ensure_topics(kafka, prefix=topic_prefix)
    args, _ = stream.parse_args(_template_args(tmp_path, bigquery_project="journeys-dry-run",
                                               topic_prefix=topic_prefix))
    pipeline = beam.Pipeline(options=PipelineOptions([*DATAFLOW_OPTIONS, "--streaming", "--dry_run=True"]))
    stream.build(pipeline, args, kafka)
    job = pipeline.run().job

    assert job.proto.type_ == dataflow.JobType.JOB_TYPE_STREAMING
    components = job.proto_pipeline.components
    root, = job.proto_pipeline.root_transform_ids
    steps = {components.transforms[t].unique_name for t in components.transforms[root].subtransforms}
    assert {"Read", "Progress", "Tables", "Land"} <= steps
    environment, = components.environments.values()
    assert environment.urn == "beam:env:docker:v1"
    assert beam_runner_api_pb2.DockerPayload.FromString(environment.payload).container_image == IMAGE
    staged = {beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(d.role_payload).staged_name
              for d in environment.dependencies}
    assert not staged & {"workflow.tar.gz", "requirements.txt", "dataflow_python_sdk.tar"}, \
        "the workers install nothing: the image has the project"


@pytest.mark.integration
@pytest.mark.slow
def test_the_launcher_builds_the_job_through_journeys_stream(kafka, topic_prefix, tmp_path):
    """deploy/dataflow/main.py as Dataflow's launcher runs it, with --dry_run instead of --template_location."""
    from pipelines.kafka_topics import ensure_topics

    ensure_topics(kafka, prefix=topic_prefix)
    env_file = tmp_path / "kafka.env"
    env_file.write_text(f"JOURNEYS_KAFKA_BOOTSTRAP={kafka.bootstrap_servers}\n")
    command = [sys.executable, str(DATAFLOW / "main.py"), *DATAFLOW_OPTIONS, "--dry_run=True",
               f"--kafka_env_file={env_file}", f"--topic_prefix={topic_prefix}", "--bigquery_project=journeys-dry-run"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
