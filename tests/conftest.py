import os
import uuid

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Pipelines refuse to start without a pseudonym key: the tests' own, in a file, so that Flink's workers (started
# before the tests) find it too. References computed in memory pseudonymise with it as the decoder does.
if not (os.environ.get("JOURNEYS_PSEUDONYM_KEY_FILE") or os.environ.get("JOURNEYS_PSEUDONYM_KEY")):
    import tempfile

    _key_file = os.path.join(tempfile.gettempdir(), "journeys-tests-pseudonym.key")
    with open(_key_file, "w") as _out:
        _out.write("journeys-tests-pseudonym-key\n")
    os.environ["JOURNEYS_PSEUDONYM_KEY_FILE"] = _key_file

# Beam's state cache in this process weighs values as a worker's does (transforms/__init__.py tunes only processes
# that import Beam before our transforms).
from transforms.state_sizing import use_cheap_state_sizing  # noqa: E402

use_cheap_state_sizing()


@pytest.fixture(scope="session")
def kafka():
    """The local broker `make test` started (deploy/local/kafka.sh); fails loudly when it is not there."""
    from pipelines.kafka_topics import admin_client
    from transforms.kafka_connection import KafkaConnection

    connection = KafkaConnection.from_env()
    admin = admin_client(connection, timeout_s=20)  # raises with the address when no broker answers
    admin.close()
    return connection


@pytest.fixture(scope="session")
def sample_events():
    """One generated event per topic: a realistic value for every field."""
    from pipelines.generate import GeneratorConfig, simulate

    return {e.topic: e.record for e in simulate(GeneratorConfig(customers=60, days=20, seed=3), b"test-key")}


@pytest.fixture
def warehouse(tmp_path):
    """A DuckDB warehouse in a fresh file (test_bigquery_warehouse.py has its own `warehouse`: the emulator's)."""
    from transforms.duckdb_warehouse import DuckDBWarehouse

    warehouse = DuckDBWarehouse(tmp_path / "journeys.duckdb")
    yield warehouse
    warehouse.close()


@pytest.fixture
def topic_prefix():
    """Fresh topics per test, so tests never see each other's records."""
    return f"t{uuid.uuid4().hex[:10]}_"


@pytest.fixture(scope="session")
def bigquery_emulator():
    """The BigQuery emulator (deploy/local/bigquery_emulator.sh): its REST endpoint. Started here if not running,
    and then stopped after the session."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "deploy" / "local" / "bigquery_emulator.sh"
    running = subprocess.run([str(script), "status"], capture_output=True, text=True)
    if running.returncode != 0:
        subprocess.run([str(script), "up"], check=True, timeout=120)
    yield subprocess.run([str(script), "status"], capture_output=True, text=True, check=True).stdout.strip()
    if running.returncode != 0:
        subprocess.run([str(script), "down"], check=False, timeout=60)


@pytest.fixture(scope="session")
def flink():
    """The local Flink session cluster (deploy/flink/flink.sh): started here if not running, left running (make test
    stops what it started)."""
    import subprocess

    from pipelines.flink import SCRIPT, LocalCluster

    subprocess.run([str(SCRIPT), "up"], check=True, timeout=900, capture_output=True)
    return LocalCluster()


@pytest.fixture
def flink_jobs(flink):
    """Cancels the streams a test left running on the cluster (a killed launcher leaves its job running)."""
    from pipelines.flink import Rest

    rest = Rest(flink.rest)
    yield rest
    for job_id in rest.running_jobs("journeys-stream-", prefix=True):
        rest.cancel(job_id)
