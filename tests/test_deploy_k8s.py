"""deploy/k8s: the manifests that run `journeys stream` on the Flink Kubernetes Operator, checked without a cluster.

Every FlinkDeployment is validated against the operator's own CRD schema, which deploy/k8s/fetch-crds.sh extracts
from the operator's API jar (Maven, a few seconds the first time), with unknown fields rejected as `kubectl apply`'s
strict field validation does. The Job's arguments go through the real `journeys stream` parser and Beam's options.
"""
from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|KEY|USERNAME|BOOTSTRAP|WEBHOOK")


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def manifests(kustomization) -> list[dict]:
    return [d for name in kustomization["resources"] for d in documents(K8S / name)]


def only(manifests: list[dict], kind: str) -> dict:
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_specs(manifest: dict) -> dict[str, dict]:
    """The pod specs in a manifest, by where they are."""
    spec = manifest["spec"]
    if manifest["kind"] == "FlinkDeployment":
        return {role: spec[role]["podTemplate"]["spec"] for role in ("jobManager", "taskManager")
                if "podTemplate" in spec.get(role, {})}
    if manifest["kind"] in ("Deployment", "Job"):
        return {"template": spec["template"]["spec"]}
    return {}


def container(pod: dict, name: str) -> dict:
    return next(c for c in pod["containers"] if c["name"] == name)


def volume_at(pod: dict, box: dict, path: str) -> dict | None:
    """The pod volume that `path`, inside container `box`, lies on (the longest mount path that holds it)."""
    mounts = [m for m in box.get("volumeMounts", []) if path == m["mountPath"] or
              path.startswith(m["mountPath"].rstrip("/") + "/")]
    if not mounts:
        return None
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    return next(v for v in pod["volumes"] if v["name"] == mount["name"])


def json_schema(node, embedded: bool = False):
    """A CRD's OpenAPI v3 schema as a JSON schema, with what the API server adds made explicit: an object's fields
    are the listed ones unless x-kubernetes-preserve-unknown-fields (strict field validation rejects the rest),
    `nullable` admits null, x-kubernetes-int-or-string takes either, and the root (or an embedded resource) has
    apiVersion, kind and metadata."""
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [json_schema(sub) for sub in value]
        elif not key.startswith("x-kubernetes-") and key != "nullable":
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if embedded or node.get("x-kubernetes-embedded-resource"):
        out.setdefault("properties", {}).update(
            {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}})
    if node.get("type") == "object" and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        if "anyOf" in out:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    return out


@pytest.fixture(scope="module")
def flink_deployment_schema() -> jsonschema.Draft4Validator:
    """The operator's FlinkDeployment v1beta1 schema (Draft 4: OpenAPI 3.0's keywords mean what they mean there)."""
    fetched = subprocess.run([str(K8S / "fetch-crds.sh")], capture_output=True, text=True, timeout=600)
    assert fetched.returncode == 0, f"deploy/k8s/fetch-crds.sh failed:\n{fetched.stderr}"
    crds = Path(fetched.stdout.strip().splitlines()[-1])
    crd = yaml.safe_load((crds / "flinkdeployments.flink.apache.org-v1.yml").read_text())
    assert crd["spec"]["names"]["kind"] == "FlinkDeployment"
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    schema = json_schema(version["schema"]["openAPIV3Schema"], embedded=True)
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def schema_errors(validator, manifest: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(manifest)]


def test_kustomization_applies_every_manifest_but_the_secret_templates(kustomization):
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secrets.example.yaml"}
    assert kustomization["namespace"] == "journeys"


def test_objects_are_well_formed(manifests):
    for manifest in manifests:
        assert manifest.get("apiVersion") and manifest.get("kind") and manifest["metadata"].get("name"), manifest
        assert "namespace" not in manifest["metadata"], "the kustomization sets the namespace"
        for where, pod in pod_specs(manifest).items():
            for box in pod.get("initContainers", []) + pod["containers"]:
                # The operator fills in flink-main-container's image from spec.image.
                assert box["name"] == "flink-main-container" or box.get("image"), (manifest["kind"], where, box)
            claimed = {v["name"] for v in pod.get("volumes", [])}
            for box in pod.get("initContainers", []) + pod["containers"]:
                assert {m["name"] for m in box.get("volumeMounts", [])} <= claimed, (manifest["kind"], box["name"])
    deployment, service = only(manifests, "Deployment"), only(manifests, "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    named_ports = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= named_ports


def test_flink_deployments_match_the_operators_crd(manifests, flink_deployment_schema):
    deployments = [m for m in manifests if m["kind"] == "FlinkDeployment"]
    assert deployments
    for deployment in deployments:
        assert deployment["apiVersion"] == "flink.apache.org/v1beta1"
        assert schema_errors(flink_deployment_schema, deployment) == []


def _unknown_spec_field(d):
    d["spec"]["taskManagers"] = {"replicas": 2}  # a typo of taskManager


def _unquoted_configuration_value(d):
    d["spec"]["flinkConfiguration"]["taskmanager.numberOfTaskSlots"] = 2  # YAML int: the CRD takes strings only


def _wrong_type(d):
    d["spec"]["taskManager"]["resource"]["cpu"] = "two"


def _unknown_flink_version(d):
    d["spec"]["flinkVersion"] = "v1_99"


def _unknown_field_in_pod_template(d):
    d["spec"]["taskManager"]["podTemplate"]["spec"]["containers"][1]["port"] = 50000  # not `ports`


@pytest.mark.parametrize("break_it, expected", [
    (_unknown_spec_field, "spec: Additional properties are not allowed ('taskManagers' was unexpected)"),
    (_unquoted_configuration_value, "spec.flinkConfiguration.taskmanager.numberOfTaskSlots: 2 is not of type 'string'"),
    (_wrong_type, "spec.taskManager.resource.cpu: 'two' is not of type 'number'"),
    (_unknown_flink_version, "spec.flinkVersion: 'v1_99' is not one of"),
    (_unknown_field_in_pod_template, "Additional properties are not allowed ('port' was unexpected)"),
])
def test_the_schema_rejects_a_broken_flink_deployment(manifests, flink_deployment_schema, break_it, expected):
    broken = copy.deepcopy(only(manifests, "FlinkDeployment"))
    break_it(broken)
    errors = schema_errors(flink_deployment_schema, broken)
    assert len(errors) == 1 and expected in errors[0], errors


def test_flink_cluster_configuration(manifests):
    spec = only(manifests, "FlinkDeployment")["spec"]
    config = spec["flinkConfiguration"]
    assert spec["flinkVersion"] == "v1_19"
    assert "job" not in spec, "a session cluster: Beam's job server submits the pipeline"
    assert config["state.backend.type"] == "rocksdb"
    assert config["execution.checkpointing.externalized-checkpoint-retention"] == "RETAIN_ON_CANCELLATION"
    assert config["execution.checkpointing.interval"]
    assert config["classloader.resolve-order"] == "parent-first"
    assert config["taskmanager.numberOfTaskSlots"] == "2"
    assert config["restart-strategy.type"]
    # Checkpoints and savepoints on the volume that JobManager and TaskManagers both mount there.
    for key in ("state.checkpoints.dir", "state.savepoints.dir"):
        path = config[key].removeprefix("file://")
        assert path != config[key], f"{key}: {config[key]}"
        for role, pod in pod_specs(only(manifests, "FlinkDeployment")).items():
            volume = volume_at(pod, container(pod, "flink-main-container"), path)
            assert volume and volume["persistentVolumeClaim"]["claimName"] == "journeys-flink-data", (key, role)


def stream_job(manifests) -> tuple[dict, dict]:
    pod = only(manifests, "Job")["spec"]["template"]["spec"]
    return pod, container(pod, "journeys-stream")


def test_the_stream_jobs_arguments_parse(manifests):
    from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions

    from pipelines.stream import parse_args

    _, box = stream_job(manifests)
    assert box["command"] == ["journeys"] and box["args"][0] == "stream"
    args, beam_args = parse_args(box["args"][1:])
    assert args.runner == "FlinkRunner"
    # parse_known_args passes what it does not know to Beam, whose options are spelled with underscores: a hyphen
    # there is a mistyped option of ours, which would be silently ignored.
    assert not [a for a in beam_args if "-" in a.split("=", 1)[0].lstrip("-")], beam_args
    assert args.bigquery_project and args.bigquery_key_file
    portable = PipelineOptions(beam_args).view_as(PortableOptions)
    assert portable.environment_type == "EXTERNAL"
    # Beam's job server, through its Service, and the artifact service it advertises only as 0.0.0.0.
    service = only(manifests, "Service")
    ports = {p["port"] for p in service["spec"]["ports"]}
    for endpoint in (portable.job_endpoint, portable.artifact_endpoint):
        host, port = endpoint.rsplit(":", 1)
        assert host == service["metadata"]["name"] and int(port) in ports, endpoint
    server = container(only(manifests, "Deployment")["spec"]["template"]["spec"], "job-server")
    assert f"--job-port={portable.job_endpoint.rsplit(':', 1)[1]}" in server["args"]
    assert f"--artifact-port={portable.artifact_endpoint.rsplit(':', 1)[1]}" in server["args"]
    # The job server submits, the launcher finds and stops running jobs: both at the JobManager's REST service.
    rest = f"{only(manifests, 'FlinkDeployment')['metadata']['name']}-rest:8081"
    assert f"--flink-master={rest}" in server["args"]
    assert beam_option(beam_args, "flink_master") == rest


def beam_option(beam_args: list[str], name: str) -> str | bool | None:
    """A Beam option that only the job server knows (Python's PipelineOptions learns those from it at run time)."""
    for arg in beam_args:
        if arg == f"--{name}":
            return True
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def test_the_job_checkpoints_where_the_cluster_keeps_them(manifests):
    from pipelines.stream import parse_args

    config = only(manifests, "FlinkDeployment")["spec"]["flinkConfiguration"]
    pod, box = stream_job(manifests)
    _, beam_args = parse_args(box["args"][1:])
    interval = re.fullmatch(r"(\d+)\s*(ms|s|min)", config["execution.checkpointing.interval"])
    assert interval, config["execution.checkpointing.interval"]
    millis = int(interval[1]) * {"ms": 1, "s": 1000, "min": 60_000}[interval[2]]
    assert beam_option(beam_args, "checkpointing_interval") == str(millis)
    assert beam_option(beam_args, "externalized_checkpoints_enabled") is True
    assert beam_option(beam_args, "retain_externalized_checkpoints_on_cancellation") is True
    assert beam_option(beam_args, "state_backend") == config["state.backend.type"]
    # pipelines/flink.py's layout: <checkpoints dir>/<job name>, found by the submitter under $JOURNEYS_LOCAL_DIR/flink.
    job_name = beam_option(beam_args, "job_name")
    assert beam_option(beam_args, "state_backend_storage_path") == f"{config['state.checkpoints.dir']}/{job_name}"
    local = next(e["value"] for e in box["env"] if e["name"] == "JOURNEYS_LOCAL_DIR")
    assert config["state.checkpoints.dir"] == f"file://{local}/flink/checkpoints"
    assert config["state.savepoints.dir"] == f"file://{local}/flink/savepoints"
    assert volume_at(pod, box, local)["persistentVolumeClaim"]["claimName"] == "journeys-flink-data"
    # The TaskManagers read the artifacts the job server staged: the same volume.
    server_pod = only(manifests, "Deployment")["spec"]["template"]["spec"]
    artifacts = beam_option(container(server_pod, "job-server")["args"], "artifacts-dir")
    assert volume_at(server_pod, container(server_pod, "job-server"), artifacts)["persistentVolumeClaim"][
        "claimName"] == "journeys-flink-data"
    tm = only(manifests, "FlinkDeployment")["spec"]["taskManager"]["podTemplate"]["spec"]
    assert volume_at(tm, container(tm, "flink-main-container"), artifacts)["persistentVolumeClaim"][
        "claimName"] == "journeys-flink-data"


def test_the_worker_pool_listens_where_the_job_sends_its_workers(manifests):
    from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions

    from pipelines.stream import parse_args

    _, box = stream_job(manifests)
    _, beam_args = parse_args(box["args"][1:])
    host, port = PipelineOptions(beam_args).view_as(PortableOptions).environment_config.rsplit(":", 1)
    assert host == "localhost", "the pool is a sidecar of each TaskManager: same pod, same network namespace"
    tm = only(manifests, "FlinkDeployment")["spec"]["taskManager"]["podTemplate"]["spec"]
    pools = [c for c in tm["containers"] if "--worker_pool" in c.get("args", [])]
    assert len(pools) == 1, "one Python SDK worker pool beside the TaskManager"
    assert int(port) in {p["containerPort"] for p in pools[0]["ports"]}
    assert pools[0]["image"] == box["image"], "workers import the same code the submitter pickled"


def secret_volumes(pod: dict) -> dict[str, dict]:
    return {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}


def test_secrets_are_only_referenced(manifests):
    template = {s["metadata"]["name"]: s["stringData"] for s in documents(K8S / "secrets.example.yaml")}
    assert all(value == "" for keys in template.values() for value in keys.values()), "a template holds no values"
    assert not [m for m in manifests if m["kind"] == "Secret"]
    for manifest in manifests:
        for where, pod in pod_specs(manifest).items():
            for volume in secret_volumes(pod).values():
                assert volume["secretName"] in template
                assert {i["key"] for i in volume.get("items", [])} <= template[volume["secretName"]].keys()
            for box in pod.get("initContainers", []) + pod["containers"]:
                for env in box.get("env", []):
                    if "valueFrom" in env:
                        ref = env["valueFrom"]["secretKeyRef"]
                        assert ref["key"] in template[ref["name"]], env
                    elif SECRET_NAME.search(env["name"]):
                        # Only a path to a file on a secret volume may be given as a value.
                        assert env["name"].endswith("_FILE"), (manifest["kind"], box["name"], env)
                        volume = volume_at(pod, box, env["value"])
                        assert volume and "secret" in volume, (manifest["kind"], box["name"], env)
                for arg in box.get("command", []) + box.get("args", []):
                    assert not re.search(r"(password|secret|token|credential)[^/]*=", arg, re.I), arg
    _, box = stream_job(manifests)
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in box["env"] if "valueFrom" in e}
    assert {"JOURNEYS_KAFKA_BOOTSTRAP", "JOURNEYS_KAFKA_SASL_USERNAME"} <= refs.keys()


def test_the_workers_find_the_secret_files_the_submitter_names(manifests):
    """The Kafka password file and the BigQuery key travel as paths in the job graph and are opened by the SDK
    workers: the worker pool must mount the same secrets at the same paths."""
    from pipelines.stream import parse_args
    from transforms.kafka_connection import KafkaConnection

    pod, box = stream_job(manifests)
    env = {e["name"]: e.get("value", "<from a secret>") for e in box["env"]}
    connection = KafkaConnection.from_env(environ=env)
    assert connection.security_protocol.startswith("SASL_") and connection.sasl_password.file
    args, _ = parse_args(box["args"][1:])
    tm = only(manifests, "FlinkDeployment")["spec"]["taskManager"]["podTemplate"]["spec"]
    pool = next(c for c in tm["containers"] if "--worker_pool" in c.get("args", []))
    for path in (connection.sasl_password.file, args.bigquery_key_file):
        submitter, worker = volume_at(pod, box, path), volume_at(tm, pool, path)
        assert submitter and worker and "secret" in submitter, path
        assert submitter["secret"] == worker["secret"], path
