import json
import subprocess
import sys

import fastavro
import pytest

JOURNEYS = [sys.executable, "-m", "pipelines.cli"]


def _run(*args):
    return subprocess.run(JOURNEYS + list(args), capture_output=True, text=True, timeout=300)


def test_help_lists_the_commands():
    result = _run("--help")
    assert result.returncode == 0
    for command in ("kafka", "generate", "peek", "count", "backfill", "stream", "validate"):
        assert command in result.stdout
    assert "--malformed" in _run("generate", "--help").stdout
    assert "--warehouse" in _run("backfill", "--help").stdout
    assert "--max-dead-letter-rate" in _run("validate", "--help").stdout


def test_every_option_of_every_command_says_what_it_does():
    import argparse

    from pipelines.cli import build_parser

    def silent(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, command in action.choices.items():
                    yield from silent(command, f"{path} {name}")
            elif action.option_strings and not action.help and action.help is not argparse.SUPPRESS:
                yield f"{path} {'/'.join(action.option_strings)}"
    assert list(silent(build_parser(), "journeys")) == []


def test_generate_writes_avro_container_files_and_a_manifest(tmp_path):
    result = _run("generate", "--customers", "80", "--days", "15", "--seed", "3", "--malformed", "0.05",
                  "--out", str(tmp_path), "--manifest", str(tmp_path / "manifest.json"))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for topic, count in manifest["events_by_topic"].items():
        with open(tmp_path / f"{topic}.avro", "rb") as events:
            rows = list(fastavro.reader(events))
        assert len(rows) == count > 0
    with open(tmp_path / "malformed.avro", "rb") as bad:
        kinds = [row["kind"] for row in fastavro.reader(bad)]
    assert len(kinds) == sum(manifest["malformed_by_kind"].values()) > 0
    assert manifest["planted"]["conversion_rate"]["email"] == pytest.approx(0.09)


@pytest.mark.integration
def test_generate_to_kafka_then_peek(kafka, topic_prefix):
    result = _run("generate", "--customers", "40", "--days", "10", "--topic-prefix", topic_prefix, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert "records/s" in result.stdout
    peek = _run("peek", "orders", "--limit", "3", "--topic-prefix", topic_prefix)
    lines = [json.loads(line) for line in peek.stdout.splitlines()]
    assert len(lines) == 3 and all(line["order_id"] and line["status"] for line in lines)


@pytest.mark.integration
def test_peek_says_when_a_topic_is_empty_or_missing(kafka, topic_prefix):
    from pipelines.kafka_topics import ensure_topics

    ensure_topics(kafka, prefix=topic_prefix)
    empty = _run("peek", "orders", "--topic-prefix", topic_prefix)
    assert (empty.returncode, empty.stdout) == (1, "")
    assert f"topic {topic_prefix}orders holds no records" in empty.stderr
    missing = _run("peek", "orders", "--topic-prefix", f"{topic_prefix}none_")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", ["backfill", "stream"])
def test_a_pipeline_started_with_the_broker_down_fails_once_with_a_clear_error(command, tmp_path):
    """Nothing listens at the bootstrap address: kafka-python retries for its bootstrap timeout, then the command
    exits 3 with one line that says what to check (no traceback), leaving no warehouse offsets behind."""
    import os
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    warehouse = tmp_path / "journeys.duckdb"
    done = subprocess.run(JOURNEYS + [command, "--warehouse", str(warehouse)], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "JOURNEYS_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"})
    assert done.returncode == 3, done.stderr[-3000:]
    assert "Kafka is unreachable" in done.stderr and f"127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not warehouse.exists()


@pytest.mark.slow
def test_peek_at_an_unreachable_broker_says_so_in_one_line(tmp_path):
    import os
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run(JOURNEYS + ["peek", "orders"], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "JOURNEYS_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"})
    assert done.returncode == 3 and "Kafka is unreachable" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_peek_with_a_wrong_scram_password_says_authentication_failed(kafka, tmp_path):
    import os
    from pathlib import Path

    local = os.environ.get("JOURNEYS_LOCAL_DIR") or Path(__file__).resolve().parents[1] / ".local"
    done = subprocess.run(JOURNEYS + ["peek", "orders", "--kafka-env-file", str(Path(local) / "kafka" / "scram.env")],
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "JOURNEYS_KAFKA_SASL_PASSWORD": "not-the-password"})
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert "Kafka refused this client: authentication failed at" in done.stderr and "SCRAM-SHA-512" in done.stderr
    assert "unreachable" not in done.stderr and "broker up" not in done.stderr


@pytest.mark.parametrize("command", ["backfill", "stream", "count"])
def test_a_misspelt_flag_is_refused_not_passed_to_beam(command, tmp_path):
    done = _run("-v", command, "--warehouse", str(tmp_path / "w.duckdb"), "--bigquery-projet", "p")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "unrecognized arguments: " in done.stderr and "--bigquery-projet" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "w.duckdb").exists()


def _published_warehouse(tmp_path):
    from transforms.duckdb_warehouse import DuckDBWarehouse

    writer = DuckDBWarehouse(tmp_path / "journeys.duckdb")
    try:
        return writer.publish()
    finally:
        writer.close()


@pytest.mark.parametrize("statement", [
    "ATTACH '{published}' AS w (READ_WRITE); DELETE FROM w.customers",
    "DELETE FROM customers",
    "COPY (SELECT 1) TO '{published}'",
    "ATTACH '{writer}' AS w (READ_WRITE); DELETE FROM w.customers",
    "ATTACH '{elsewhere}' AS other",
    "SELECT * FROM read_text('/etc/hostname')",
    "INSTALL httpfs",
    "SET enable_external_access = true",
    "RESET lock_configuration",
])
def test_journeys_sql_cannot_write_any_file_or_read_another(tmp_path, statement):
    import argparse
    import hashlib

    from pipelines.cli import cmd_sql

    published = _published_warehouse(tmp_path)
    files = {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in tmp_path.iterdir()}
    query = statement.format(published=published, writer=tmp_path / "journeys.duckdb",
                             elsewhere=tmp_path / "elsewhere.duckdb")
    assert cmd_sql(argparse.Namespace(warehouse=published, query=query, format="table")) == 2  # refused
    assert {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in tmp_path.iterdir()} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journeys.duckdb", "journeys.private.duckdb",
                                                          "journeys.published.duckdb"]
    assert cmd_sql(argparse.Namespace(warehouse=published, query="SELECT count(*) FROM customers", format="table")) == 0


def test_validate_on_a_corrupt_warehouse_fails_loudly_instead_of_validating_the_published_copy(tmp_path, capsys):
    from pipelines import validate
    from transforms.duckdb_warehouse import DuckDBWarehouse

    writer = DuckDBWarehouse(tmp_path / "journeys.duckdb")
    writer.connection.execute("CREATE TABLE filler AS SELECT range AS n, repeat('x', 100) AS s FROM range(100000)")
    writer.publish()
    writer.close()
    corrupt = bytearray((tmp_path / "journeys.duckdb").read_bytes())
    for at in range(12288 + 64, len(corrupt), 262144):  # inside every block, after each block's checksum
        corrupt[at:at + 64] = b"\xa5" * 64
    (tmp_path / "journeys.duckdb").write_bytes(bytes(corrupt))
    status = validate.main(["--warehouse", str(tmp_path / "journeys.duckdb")])
    assert status == validate.UNREADABLE
    assert "cannot open" in capsys.readouterr().err


def test_a_pipeline_without_a_pseudonym_key_refuses_to_start(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEYS_PSEUDONYM_KEY")}
    done = subprocess.run(JOURNEYS + ["backfill", "--warehouse", str(tmp_path / "w.duckdb")], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 1 and "no pseudonym key" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "w.duckdb").exists()


def test_sql_ends_a_users_mistake_in_one_line_and_prints_csv_or_json_lines(tmp_path):
    import duckdb

    warehouse = tmp_path / "w.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        con.execute("CREATE TABLE customers AS SELECT 'ps_1' AS customer_id, 2 AS orders, NULL AS segment")
    for query, says in [("SELECT * FROM customerz", "customerz"), ("SELEC 1", "syntax"),
                        ("SELECT nope FROM customers", "nope")]:
        failed = _run("sql", "--warehouse", str(warehouse), query)
        assert failed.returncode == 2 and failed.stdout == "", query
        assert len(failed.stderr.strip().splitlines()) == 1 and says in failed.stderr.lower(), failed.stderr
    missing = _run("sql", "--warehouse", str(tmp_path / "none.duckdb"), "SELECT 1")
    assert missing.returncode == 2 and "no warehouse at" in missing.stderr and "Traceback" not in missing.stderr
    query = "SELECT customer_id, orders, segment FROM customers"
    assert _run("sql", "--warehouse", str(warehouse), "--format", "csv", query).stdout == (
        "customer_id,orders,segment\nps_1,2,\n")
    lines = _run("sql", "--warehouse", str(warehouse), "--format", "json", query).stdout.splitlines()
    assert [json.loads(line) for line in lines] == [{"customer_id": "ps_1", "orders": 2, "segment": None}]
    assert _run("sql", "--warehouse", str(warehouse), query).stdout.split() == ["customer_id", "orders", "segment",
                                                                               "ps_1", "2"]


def test_a_backfill_ends_with_what_it_landed_in_lines_a_person_reads():
    from pipelines.backfill import landed_summary

    text = landed_summary({"published": "/w/j.published.duckdb", "quarantined": 3, "touchpoints": 1234567,
                           "dead_letters": 9})
    assert text.splitlines() == ["landed (rows per table; published copy: /w/j.published.duckdb):",
                                 "  touchpoints      1,234,567", "  dead_letters             9",
                                 "  rows the gate quarantined: 3"]
