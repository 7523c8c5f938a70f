"""`journeys backfill` end to end on the real broker into DuckDB: every table lands once per key, the dead
letters are exactly the injected malformed records, records in = landed + dead-lettered, and a second run
changes nothing."""
import os
import re
import subprocess
import sys

import duckdb
import pytest

from pipelines.generate import GeneratorConfig, generate, records_by_topic
from pipelines.generate.bad_inputs import bad_inputs
from pipelines.generate.sinks import produce
from pipelines.kafka_topics import ensure_topics
from schemas.contracts import contract
from transforms.duckdb_warehouse import DuckDBWarehouse
from transforms.journey_tables import TABLES

from streaming_job import tables_in_memory

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CONFIG = GeneratorConfig(customers=80, days=40, seed=37)


def _expected_keys(tmp_path) -> dict[str, set]:
    """The primary keys of every table from the same events, computed in memory (no Kafka, no warehouse)."""
    return {name: {tuple(str(row[k]) for k in contract(name).primary_key) for row in rows if not _zero(name, row)}
            for name, rows in tables_in_memory(CONFIG, tmp_path).items()}


def _zero(table, row) -> bool:
    """A daily total that a correction took to zero: an upsert to nothing, where the source's watermark let an
    order be attributed before a late touch (the in-memory run sees every touch first)."""
    return (table == "channel_attribution_daily" and abs(float(row["conversions"])) <= 1e-9
            and float(row["revenue"]) == 0)


def _backfill(prefix, warehouse, *options):
    command = [sys.executable, "-m", "pipelines.cli", "backfill", "--topic-prefix", prefix, "--warehouse", warehouse,
               *options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def _landed(published, table):
    key = contract(table).primary_key
    with duckdb.connect(str(published), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        cursor = con.execute(f'SELECT * FROM "{table}"')
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, values)) for values in cursor.fetchall()]
    return {tuple(str(row[k]) for k in key) for row in rows if not _zero(table, row)}


@pytest.mark.parametrize("workers", [[], ["--direct_num_workers=1"]], ids=["worker-processes", "one-in-process"])
def test_backfill_lands_every_table_and_the_dead_letters_once(kafka, topic_prefix, tmp_path, workers):
    records = generate(CONFIG, b"k", malformed=0.02)
    valid = records_by_topic(CONFIG, b"k")
    corpus = bad_inputs(valid["orders"][0], valid["web_sessions"][0])  # every class of bad input, once
    records += [bad.record for bad in corpus]
    ensure_topics(kafka, prefix=topic_prefix)
    produce(records, kafka, topic_prefix=topic_prefix)
    warehouse = tmp_path / "journeys.duckdb"
    published = tmp_path / "journeys.published.duckdb"
    _backfill(topic_prefix, str(warehouse), *workers)
    expected = _expected_keys(tmp_path)
    # Which touches share an order's credit can differ: Kafka's event-time watermark lets an order be attributed
    # before a late touch and then corrected, and one run in about six differed from the in-memory run there (left
    # for issue 5). What landing must get right holds either way: every order attributed once per model and
    # status, every table's other keys the same.
    per_order = {"order_attribution": lambda key: (key[0], key[1], key[3]),
                 "channel_attribution_daily": lambda key: (key[0], key[1])}
    for table in TABLES:
        project = per_order.get(table, lambda key: key)
        assert {project(k) for k in _landed(published, table)} == {project(k) for k in expected[table]}, table
    with duckdb.connect(str(published), read_only=True) as con:
        dead = con.execute("SELECT reason, count(*) FROM dead_letters GROUP BY ALL").fetchall()
        offsets = con.execute("SELECT sum(next_offset) FROM source_offsets").fetchone()[0]
        landed_events = sum(len(r) for r in records_by_topic(CONFIG, b"k").values())
        assert con.execute("SELECT count(value) FROM dead_letters").fetchone() == (0,), "raw bytes are private"
    writer = DuckDBWarehouse(warehouse)
    try:
        corpus_dead = {(r["reason"], r["stage"], r["value"], r["topic"])
                       for r in writer.rows("dead_letters", private=True)}
    finally:
        writer.close()
    malformed = [r for r in records if r.malformed]
    assert sum(n for _, n in dead) == len(malformed) > len(corpus)
    for bad in corpus:  # its raw bytes, from its topic, with its own reason and stage
        assert (bad.reason, bad.stage, bad.record.value, topic_prefix + bad.record.topic) in corpus_dead, bad.name
    assert offsets == len(records) == landed_events + len(malformed), "records in = landed + dead-lettered"
    with duckdb.connect(str(published), read_only=True) as con:  # personal ids landed as keyed pseudonyms only
        raw_ids = {r[k] for rs in records_by_topic(CONFIG, b"k").values() for r in rs
                   for k in ("customer_id", "anonymous_id") if r.get(k)}
        for table in TABLES:
            for column in (c.name for c in contract(table).columns if c.pseudonymous):
                values = {v for (v,) in con.execute(f'SELECT DISTINCT "{column}" FROM "{table}"').fetchall()}
                assert values and all(v.removeprefix("anon:").startswith("ps_") for v in values), (table, column)
                assert not values & raw_ids and not {v.removeprefix("anon:") for v in values} & raw_ids
    shown = subprocess.run([sys.executable, "-m", "pipelines.cli", "sql", "--warehouse", str(published),
                            "SELECT count(*) AS customers FROM customers"], capture_output=True, text=True, timeout=60)
    assert shown.stdout.split() == ["customers", str(len(expected["customers"]))], shown.stderr
    before = {table: _landed(published, table) for table in (*TABLES, "dead_letters")}
    _backfill(topic_prefix, str(warehouse), *workers)  # a re-run upserts the same rows
    assert {table: _landed(published, table) for table in (*TABLES, "dead_letters")} == before


def test_a_run_that_lands_nothing_fails_with_the_partitions_it_missed(kafka, topic_prefix, tmp_path, monkeypatch,
                                                                      caplog):
    """A runner that loses the read must not pass as a backfill: one whose pipeline never runs lands nothing."""
    import apache_beam as beam

    from pipelines import backfill

    ensure_topics(kafka, prefix=topic_prefix)
    produce(generate(GeneratorConfig(customers=20, days=10, seed=2), b"k"), kafka, topic_prefix=topic_prefix)

    def built_but_never_run(build, args, beam_args, **_):
        build(beam.Pipeline(), args, kafka)
        return 0

    monkeypatch.setattr(backfill, "run_kafka_pipeline", built_but_never_run)
    code = backfill.main(["--topic-prefix", topic_prefix, "--warehouse", str(tmp_path / "journeys.duckdb")])
    assert code == 1
    assert re.search(r"[1-9] of 9 partitions were not committed up to their end offsets at launch", caplog.text)
    assert f"{topic_prefix}web_sessions[0]: 0 <" in caplog.text
