"""Live equals batch, as a property: the same generated events delivered to the streaming tables in random arrival
orders, batch sizes, watermark lags and pauses (TestStream) end, once the watermark has passed them, with the tables
a backfill computes; and the stream's output, landed by the stream's own commit step cut at random points (a
commit may fall inside an order's emission), leaves every block-severity table rule of the contracts holding after
every commit. The real broker's side of this is in test_faults.py (a month's second half after the first went idle).

JOURNEYS_PROPERTY_RUNS random deliveries (default 3, seeds 0, 1, ...): CI runs a few; scale it up to search.
"""
import dataclasses
import datetime as dt
import json
import os
import random
import threading

import apache_beam as beam
import duckdb
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from pipelines.generate import GeneratorConfig, records_by_topic
from pipelines.runners import runner_args
from schemas.contracts import contracts
from transforms.dq_suites import QualityConfig
from transforms.failed_events import FAILED
from transforms.journey_tables import TABLES, CustomerJourneyTables, TablesConfig
from transforms.warehouse import READ, TICK, _CommitPeriodically, latest_rows, row_batch
from writer_stubs import Bag, Landing, Value

pytestmark = [pytest.mark.slow]
WORLD = GeneratorConfig(customers=40, days=50, seed=53)
RUNS = int(os.environ.get("JOURNEYS_PROPERTY_RUNS", "3"))
_lock = threading.Lock()


class _Collect(beam.DoFn):
    """(table, row) → one JSON line each, in the order the rows reach this step: what a writer would receive."""

    def __init__(self, path: str):
        self.path = path

    def process(self, item):
        table, pane, row = item
        with _lock, open(self.path, "a") as out:
            out.write(json.dumps([table, pane, row], default=str) + "\n")


def _tables(topics, path):
    """Each row with its firing (pane index), read where the writer reads it: before the rows leave their windows."""
    tables = topics | CustomerJourneyTables(TablesConfig(update_every_s=None))
    tables[FAILED] = tables[FAILED] | "FailedAsRows" >> beam.Map(dataclasses.asdict)  # none, _read checks
    tagged = [rows | f"Tag{name}" >> beam.Map(lambda row, table, pane=beam.DoFn.PaneInfoParam:
                                              (table, pane.index, row), name)
              | f"Global{name}" >> beam.WindowInto(beam.window.GlobalWindows()) for name, rows in tables.items()]
    _ = tagged | beam.Flatten() | beam.ParDo(_Collect(str(path)))


def _at(when: dt.datetime) -> Timestamp:
    return Timestamp.from_utc_datetime(when)


def _delivery(world: dict, seed: int) -> TestStream:
    """The events in a random arrival order: each up to `delay` after its event time, released in batches of random
    size, the watermark trailing the newest arrival by a random lag (kept so that no event arrives behind the
    watermark by more than the allowed lateness), and random pauses of processing time between batches."""
    rng = random.Random(seed)
    delay = dt.timedelta(minutes=rng.choice([0, 5, 30, 50]))
    lag = dt.timedelta(minutes=rng.choice([1, 5, 9]))
    arrivals = sorted(((r["event_time"] + rng.random() * delay, rng.random(), topic, r)
                       for topic, records in world.items() for r in records), key=lambda a: a[:2])
    stream = TestStream()
    watermark, index = None, 0
    while index < len(arrivals):
        size = rng.choice([1, 7, 50, 400])
        batch, index = arrivals[index:index + size], index + size
        stream.add_elements([TimestampedValue((topic, r), _at(r["event_time"])) for _, _, topic, r in batch])
        newest = (batch[-1][0] - lag).replace(microsecond=0)
        if watermark is None or newest > watermark:
            watermark = newest
            stream.advance_watermark_to(_at(watermark))
        if rng.random() < 0.1:
            stream.advance_processing_time(rng.choice([1, 30]))
    stream.advance_watermark_to_infinity()
    return stream


def _streamed(world: dict, seed: int, path) -> list:
    options = PipelineOptions(runner_args("PrismRunner", streaming=True))
    with TestPipeline(options=options) as pipeline:
        events = pipeline | "Deliver" >> _delivery(world, seed)
        topics = {topic: (events | f"Only{topic}" >> beam.Filter(lambda e, topic=topic: e[0] == topic)
                          | f"Record{topic}" >> beam.Map(lambda e: e[1])) for topic in world}
        _tables(topics, path)
    return _read(path)


def _backfill(world: dict, path) -> list:
    with TestPipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as pipeline:
        topics = {topic: (pipeline | f"Create{topic}" >> beam.Create(records)
                          | f"Time{topic}" >> beam.Map(lambda r: TimestampedValue(r, _at(r["event_time"]))))
                  for topic, records in world.items()}
        _tables(topics, path)
    return _read(path)


def _read(path) -> list:
    from streaming_job import _typed

    with open(path) as lines:
        collected = list(map(json.loads, lines))
    assert [row for table, _, row in collected if table == FAILED] == [], "a step failed on a valid event"
    return [(table, pane, _typed(table, row)) for table, pane, row in collected]


def _rules_broken(con) -> list[str]:
    """Every block-severity table rule of the contracts whose query gives a value out of its bounds."""
    config, broken = QualityConfig(max_event_age_hours=1e6), []
    for table in contracts().values():
        for rule in table.table_rules:
            if rule.severity != "block":
                continue
            low, high = config.bound(rule.min), config.bound(rule.max)
            for (value,) in con.execute(f"SELECT value FROM ({rule.query}) WHERE value IS NOT NULL").fetchall():
                if (low is not None and value < low) or (high is not None and value > high):
                    broken.append(f"{table.table}.{rule.name}: {value}")
                    break
    return broken


def _land_at_random_commits(items: list, target, seed: int) -> list[str]:
    """The stream's commit step given `items` in order, a commit due at random points (inside an emission too);
    after each commit, the rules it broke. Returns them all."""
    rng = random.Random(seed)
    writer = _CommitPeriodically(str(target), commit_every_s=3600, hold_after_catch_up_s=0, quality=QualityConfig())
    writer.open()
    writer.quality = Landing(writer.warehouse)
    state = dict(pending=Bag(), last_commit=Value(), caught_up_at=Value(), landed=Value())
    broken = []

    def commit():
        state["last_commit"].write(0.0)  # due: the next item triggers it
        if deliver((TICK,)):
            broken.extend(f"after commit at item {position}: {rule}"
                          for rule in _rules_broken(writer.warehouse.connection))

    deliver = lambda item: list(writer.process((None, item), **state))
    deliver((READ, ("orders", 0), 1))
    for position, (table, pane, row) in enumerate(items):
        deliver(row_batch([(table, (pane,), row)]))
        if rng.random() < 0.01:
            commit()
    commit()
    commit()  # the items that came with the last one
    writer.teardown()
    return broken


def _landed_tables(target) -> dict:
    with duckdb.connect(str(target), read_only=True) as con:
        return {table: sorted(map(str, con.execute(f'SELECT * FROM "{table}"').fetchall())) for table in TABLES}


@pytest.fixture(scope="module")
def world():
    return records_by_topic(WORLD, b"k")


@pytest.fixture(scope="module")
def batch(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch")
    rows = _backfill(world, out / "rows.jsonl")
    by_table: dict = {}
    for table, pane, row in rows:
        by_table.setdefault(table, []).append(((pane,), row))
    from transforms.warehouse import open_warehouse

    warehouse = open_warehouse(out / "batch.duckdb")
    warehouse.commit({table: latest_rows(table, table_rows) for table, table_rows in by_table.items()})
    warehouse.close()
    return _landed_tables(out / "batch.duckdb")


@pytest.mark.parametrize("seed", range(RUNS))
def test_any_arrival_order_ends_as_the_backfill_with_every_rule_holding_at_every_commit(world, batch, seed, tmp_path):
    items = _streamed(world, seed, tmp_path / "rows.jsonl")
    broken = _land_at_random_commits(items, tmp_path / "stream.duckdb", seed)
    assert broken == []
    streamed = _landed_tables(tmp_path / "stream.duckdb")
    assert {t: len(rows) for t, rows in streamed.items()} == {t: len(rows) for t, rows in batch.items()}
    for table in TABLES:
        assert streamed[table] == batch[table], table
