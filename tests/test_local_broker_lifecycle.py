"""`journeys kafka up|status|down` on a fresh state directory: fetch, format, start, crash, restart, stop.

Runs a second broker on its own ports and directory, so the shared test broker is left alone.
"""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.generate import GeneratorConfig, generate
from pipelines.generate.sinks import produce
from pipelines.kafka_topics import read_topic
from tests.ports import free_port_block
from transforms.kafka_connection import KafkaConnection

pytestmark = [pytest.mark.integration, pytest.mark.slow]
JOURNEYS = [sys.executable, "-m", "pipelines.cli"]


def test_up_twice_crash_restart_and_down(tmp_path):
    port = free_port_block(3)  # broker, controller, SASL
    env = {**os.environ, "JOURNEYS_LOCAL_DIR": str(tmp_path), "JOURNEYS_KAFKA_PORT": str(port),
           "JOURNEYS_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"}

    def journeys(*args):
        return subprocess.run(JOURNEYS + list(args), env=env, capture_output=True, text=True, timeout=300)

    try:
        up = journeys("kafka", "up")
        assert up.returncode == 0, up.stderr
        assert "topics: social_interactions (3 partitions)" in up.stdout and "started in" in up.stderr
        assert (tmp_path / "kafka" / "libs" / "kafka-clients-4.1.1.jar").exists()
        again = journeys("kafka", "up")
        assert again.returncode == 0 and "already running" in again.stderr

        status = journeys("kafka", "status")
        assert status.returncode == 0 and f"bootstrap=127.0.0.1:{port}" in status.stdout
        connection = KafkaConnection(bootstrap_servers=f"127.0.0.1:{port}")
        orders = [r for r in generate(GeneratorConfig(customers=100, days=10, seed=8), b"k") if r.topic == "orders"]
        produce(orders, connection)

        # A crash: the process dies without cleaning up; its pid file stays behind.
        pid = int((tmp_path / "kafka" / "kafka.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
        assert journeys("kafka", "status").returncode == 3
        restarted = journeys("kafka", "up")
        assert restarted.returncode == 0, restarted.stderr
        assert "stale pid file" in restarted.stderr
        # What was acknowledged before the crash is still there.
        assert sum(1 for _ in read_topic(connection, "orders")) == len(orders)
    finally:
        down = journeys("kafka", "down")
    assert down.returncode == 0
    assert journeys("kafka", "status").returncode == 3
    assert all(_free(port + i) for i in range(3))


def _wait_gone(pid: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def _free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0
