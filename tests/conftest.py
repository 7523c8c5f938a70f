import os
import uuid

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


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
def topic_prefix():
    """Fresh topics per test, so tests never see each other's records."""
    return f"t{uuid.uuid4().hex[:10]}_"
