"""Dataflow Flex Template entry point: `journeys stream` on Dataflow, its job graph built on the launcher VM.

Dataflow's launcher runs `python main.py --name=value ...` with the template's parameters (metadata.json) and
Dataflow's own options (--project, --region, --job_name, --template_location, ...). The parameters are spelled as
Beam spells its options, with underscores; `journeys stream` spells its own with dashes. A `*_file` parameter names
a Secret Manager secret version: those the workers use are read through Secret Manager where they are used, the
others here into a private file for the launch only. No secret is a job parameter or part of the job graph.
"""
from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

COMMAND = "stream"
METADATA = Path(__file__).with_name("metadata.json")
SECRET_VERSION = re.compile(r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$")
# Secrets the workers use (the Kafka password, the alert webhook): passed on as their version names, which the
# launcher and each worker read through Secret Manager where they are used (transforms/secret.py). A secret value
# never becomes part of the job graph.
READ_WHERE_USED = {"kafka_env_file", "alert_webhook_file", "pseudonym_key_file"}
# The workers need this image: the project is installed in it, and nothing is installed at launch or on workers.
IMAGE_OPTIONS = ("--sdk_container_image", "--worker_harness_container_image")


def parameter_names(metadata: Path = METADATA) -> set[str]:
    return {parameter["name"] for parameter in json.loads(metadata.read_text())["parameters"]}


def parser_args(argv: list[str], names: set[str], read_secret, secrets_dir: Path) -> list[str]:
    """The launcher's arguments as the `journeys stream` parser takes them; Beam's pass through unchanged."""
    args = []
    for arg in argv:
        name, equals, value = arg[2:].partition("=")
        if arg.startswith("--") and equals and name in names:
            if name.endswith("_file") and SECRET_VERSION.match(value) and name not in READ_WHERE_USED:
                path = secrets_dir / name
                path.write_bytes(read_secret(value))
                value = str(path)
            arg = f"--{name.replace('_', '-')}={value}"
        args.append(arg)
    return args


def access_secret(version: str) -> bytes:
    from google.cloud import secretmanager

    return secretmanager.SecretManagerServiceClient().access_secret_version(name=version).payload.data


def main(argv: list[str]) -> int:
    if not any(arg.partition("=")[0] in IMAGE_OPTIONS for arg in argv):
        raise SystemExit("pass sdk_container_image=<this template's image>: Dataflow's default worker image does "
                         "not have customer-journeys installed")
    from pipelines import cli

    with tempfile.TemporaryDirectory(prefix="journeys-secrets-") as secrets_dir:
        return cli.main([COMMAND, "--runner=DataflowRunner",
                         *parser_args(argv, parameter_names(), access_secret, Path(secrets_dir))])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
