"""Every table of CustomerJourneyTables from one generated history, against a reference written separately in
DuckDB SQL over the raw events (only GA4 channel grouping is shared: it has table-driven tests of its own)."""
import dataclasses
import datetime as dt
import itertools
import math
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from decimal import Decimal

import apache_beam as beam
import duckdb
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

import schemas
from pipelines.generate import GeneratorConfig, PlantedTruth, generate, records_by_topic
from pipelines.generate.records import MALFORMED_KINDS
from pipelines.generate.sinks import produce
from pipelines.kafka_topics import ensure_topics
from pipelines.runners import runner_args
from schemas.contracts import RETRACTED, contract
from transforms.attribution import HEURISTIC_MODELS, AttributionConfig
from transforms.bigquery_warehouse import BigQueryTarget
from transforms.customer_journeys import INTERVAL_COLUMNS
from transforms.decode_events import DEAD_LETTERS, DecodeEvents, EventDecoder
from transforms.duckdb_warehouse import DuckDBWarehouse, held_by_a_writer
from transforms.json_lines import AppendJsonLines, read_json_lines
from transforms.failed_events import FAILED
from transforms.journey_tables import TABLES, CustomerJourneyTables, TablesConfig
from transforms.kafka_source import ReadFromKafka

from streaming_job import Sink, ends_as, expected_tables, start_job
from transforms.warehouse import latest_rows
from reference import (CHANNEL_ATTRIBUTION_DAILY, ORDER_ATTRIBUTION, query as _query, reference_connection,
                       retention_reference)

# A backfill of a larger history; smaller ones as streams: a TestStream, and the real broker read by Prism; and end
# to end (broker → pipeline → warehouse, the tables read back from DuckDB and BigQuery): `journeys backfill` on the
# in-process engine (DuckDB) and Prism (BigQuery), and `journeys backfill` and `journeys stream` on the local Flink
# cluster into both.
LANDED_WORLD = GeneratorConfig(customers=100, days=60, seed=47)
LANDED = {"duckdb": ("backfill", []), "bigquery": ("backfill", ["--runner", "PrismRunner"]),
          "flink-duckdb": ("backfill", ["--runner", "FlinkRunner"]),
          "flink-bigquery": ("backfill", ["--runner", "FlinkRunner"]),
          "flink-stream-duckdb": ("stream", ["--runner", "FlinkRunner"]),
          "flink-stream-bigquery": ("stream", ["--runner", "FlinkRunner"])}
# A stream fits a window's data-driven attribution once the wall clock (its quiet partitions' watermark) has passed
# the window's end plus two lookbacks: the streamed world ends early enough for every window to be complete now.
STREAMED_WORLD = dataclasses.replace(LANDED_WORLD, start=dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc))
WORLDS = {"backfill": GeneratorConfig(customers=500, days=150, seed=23),
          "stream": GeneratorConfig(customers=100, days=75, seed=29),
          "broker": GeneratorConfig(customers=100, days=75, seed=31),
          **{mode: STREAMED_WORLD if LANDED[mode][0] == "stream" else LANDED_WORLD for mode in LANDED}}
MALFORMED = 0.02  # of the records the landed modes produce


def _marks(mode):
    return [pytest.mark.integration, pytest.mark.slow, *([pytest.mark.bigquery] if "bigquery" in mode else []),
            *([pytest.mark.flink] if "flink" in mode else [])]


@pytest.fixture(scope="module", params=["backfill", "stream", *(pytest.param(mode, marks=_marks(mode))
                                                                for mode in ("broker", *LANDED))])
def mode(request):
    return request.param


@pytest.fixture(scope="module")
def world(mode):
    """The mode's events as decoded: a landed mode's pipeline pseudonymises personal ids (with the tests' key), so
    its reference is computed on the same pseudonyms."""
    world = records_by_topic(WORLDS[mode], b"k")
    if mode not in LANDED:
        return world
    from transforms.pseudonymise import Pseudonymiser, key_secret

    pseudonyms = Pseudonymiser(key_secret())
    return {topic: [pseudonyms.record(topic, record) for record in records] for topic, records in world.items()}


def _at(when: dt.datetime) -> Timestamp:
    return Timestamp.from_utc_datetime(when)


def _backfill(pipeline, world):
    return {topic: (pipeline | f"Create{topic}" >> beam.Create(records)
                    | f"Time{topic}" >> beam.Map(lambda r: TimestampedValue(r, _at(r["event_time"]))))
            for topic, records in world.items()}


WATERMARK_LAG = dt.timedelta(minutes=10)  # the stream's watermark trails the newest arrival by this much...
MAX_DELAY = dt.timedelta(minutes=55)  # ...while events arrive up to this late: behind the watermark, within lateness


def _stream(pipeline, world):
    """The events as a stream: each arrives up to MAX_DELAY after its event time (so out of order), in steps of
    arrival time, and the watermark trails the arrivals by WATERMARK_LAG, so delayed events arrive behind it."""
    rng = random.Random(5)
    arrivals = sorted(((r["event_time"] + rng.random() * MAX_DELAY, rng.random(), topic, r)
                       for topic, records in world.items() for r in records), key=lambda a: a[:2])
    stream = TestStream()  # one stream of (topic, record): Prism drops the tags of a multi-output TestStream
    watermark = None
    for _, step in itertools.groupby(arrivals, key=lambda a: int(a[0].timestamp()) // 3600):
        step = list(step)
        stream.add_elements([TimestampedValue((topic, r), _at(r["event_time"])) for _, _, topic, r in step])
        lagging = (step[-1][0] - WATERMARK_LAG).replace(microsecond=0)  # TestStream takes whole milliseconds
        watermark = max(watermark or lagging, lagging)
        stream.advance_watermark_to(_at(watermark))
    stream.advance_watermark_to_infinity()
    events = pipeline | "Stream" >> stream
    return {topic: (events | f"Only{topic}" >> beam.Filter(lambda event, topic=topic: event[0] == topic)
                    | f"Record{topic}" >> beam.Map(lambda event: event[1])) for topic in world}


def _broker(pipeline, config, connection):
    """The events produced to fresh topics of the real broker, some up to 10 minutes out of order (behind the
    source's watermark, which trails the newest event by 5 s), and read back as a stream up to the end offsets."""
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    ensure_topics(connection, prefix=prefix)
    produce(generate(config, b"k", out_of_order=0.2), connection, topic_prefix=prefix)
    decoder = EventDecoder.for_prefix(prefix)
    messages = pipeline | "Read" >> ReadFromKafka(connection, [prefix + t for t in schemas.TOPICS], bounded=True,
                                                  event_time=decoder, max_out_of_orderness_s=5)
    decoded = messages | "Decode" >> DecodeEvents(decoder)
    _ = decoded[DEAD_LETTERS] | "NoDeadLetters" >> beam.Map(_fail_on_dead_letter)
    return {topic: decoded[topic] for topic in schemas.TOPICS}


def _fail_on_dead_letter(dead_letter):
    raise AssertionError(f"a generated event was dead-lettered: {dead_letter}")


def _latest(rows: list[dict], table: str) -> list[dict]:
    """A stream re-emits rows as they change: what its writer lands (per group the newest emission, per key the
    newest row). An emission's rows share their firing, as the writer knows it from their pane: here the position
    of its first row."""
    group = contract(table).replace_group
    firings: dict = {}
    emission = lambda position, row: firings.setdefault((*(row[g] for g in group), row.get("revision")), position)
    return latest_rows(table, [((emission(position, row) if group else position,), row)
                               for position, row in enumerate(rows)])


def _landed(request, mode, out) -> dict[str, list[dict]]:
    """The world (with malformed records among it) produced to fresh topics, `journeys backfill` (or `journeys
    stream` until its tables are final) into the mode's warehouse, and every table read back from it, the dead
    letters and the stored offsets included."""
    connection = request.getfixturevalue("kafka")
    if "flink" in mode:
        request.getfixturevalue("flink")
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    ensure_topics(connection, prefix=prefix)
    records = generate(WORLDS[mode], b"k", malformed=MALFORMED)
    produce(records, connection, topic_prefix=prefix)
    command, runner = LANDED[mode]
    if mode.endswith("duckdb"):
        target = out / "journeys.duckdb"
        sink = ["--warehouse", str(target)]
    else:
        target = BigQueryTarget("journeys-local", prefix + "landed", endpoint=request.getfixturevalue(
            "bigquery_emulator"))
        sink = ["--bigquery-project", target.project, "--bigquery-dataset", target.dataset,
                "--bigquery-endpoint", target.endpoint]
    launch = [sys.executable, "-m", "pipelines.cli", command, "--topic-prefix", prefix, *sink, *runner]
    if command == "backfill":
        done = subprocess.run(launch, capture_output=True, text=True, timeout=900, env=os.environ)
        assert done.returncode == 0, done.stderr[-4000:]
        return _read_back(target)
    # A stream's tables are final once every record is committed and the watermark has passed every event: they
    # then equal the tables computed in memory (tests/streaming_job.py), which the tests below hold to the reference.
    sink = Sink("duckdb" if mode.endswith("duckdb") else "bigquery", out, prefix,
                None if mode.endswith("duckdb") else target.endpoint)
    expected = expected_tables(sink, WORLDS[mode])
    job = start_job(prefix, sink, "landed", runner=runner[-1])
    try:
        ends_as(expected, sink, "landed", job, len(records), timeout_s=600)
    finally:
        job.terminate()  # SIGTERM: the job stops with a savepoint
        job.wait(timeout=300)
    return _read_back(sink.target("landed"), writer_stops_within_s=120)


def _read_back(target, writer_stops_within_s: float = 0) -> dict[str, list[dict]]:
    """Every table as its readers see it, and the dead letters' raw bytes from the writer's private store (which a
    stream's writer holds until its worker has stopped)."""
    names = [*TABLES, "dead_letters", "source_offsets"]
    if not isinstance(target, BigQueryTarget):
        with duckdb.connect(str(target.with_suffix(".published.duckdb")), read_only=True) as con:
            con.execute("SET TimeZone = 'UTC'")
            landed = {name: _query(con, f'SELECT * FROM "{name}"') for name in names}
        assert all(row["value"] is None for row in landed["dead_letters"]), "readers never see raw bytes"
        deadline = time.monotonic() + writer_stops_within_s
        while True:
            try:
                writer = DuckDBWarehouse(target)  # which keeps them in its private store
                break
            except duckdb.IOException as error:
                if not held_by_a_writer(error) or time.monotonic() > deadline:
                    raise
                time.sleep(2)
        try:
            landed["dead_letters"] = writer.rows("dead_letters", private=True)
        finally:
            writer.close()
        return landed
    client = target.client()
    landed = {name: [dict(row.items()) for row in client.query(
        f"SELECT * FROM `{target.project}.{target.dataset}.{name}`").result()] for name in names}
    for name in TABLES:  # NUMERIC comes back as Decimal("70"): to the contract's scale, as DuckDB gives it
        scales = {c.name: Decimal(1).scaleb(-c.decimal[1]) for c in contract(name).columns if c.decimal}
        for row in landed[name]:
            row.update({c: row[c].quantize(unit) for c, unit in scales.items() if row[c] is not None})
    return landed


@pytest.fixture(scope="module")
def tables(request, mode, world, tmp_path_factory):
    """Every table from the world: as a backfill, as a stream with out-of-order and late events, or landed."""
    out = tmp_path_factory.mktemp(mode)
    if mode in LANDED:
        return _landed(request, mode, out)
    streaming = mode != "backfill"
    options = PipelineOptions(runner_args("PrismRunner", streaming=True) if streaming else ["--runner=FnApiRunner"])
    with TestPipeline(options=options) as pipeline:
        if mode == "broker":
            topics = _broker(pipeline, WORLDS[mode], request.getfixturevalue("kafka"))
        else:
            topics = (_stream if streaming else _backfill)(pipeline, world)
        # A bounded stream: the all-of-history tables once, at its end (see updating_global_window)
        config = TablesConfig(update_every_s=None)
        tables = topics | CustomerJourneyTables(config)
        tables[FAILED] = tables[FAILED] | "FailedAsRows" >> beam.Map(dataclasses.asdict)
        for name, rows in tables.items():
            _ = rows | f"Write{name}" >> beam.ParDo(AppendJsonLines(str(out / f"{name}.jsonl")))
    assert read_json_lines(out / f"{FAILED}.jsonl") == [], "a step failed on a valid event"
    return {name: _latest(read_json_lines(out / f"{name}.jsonl"), name) for name in TABLES}


def _norm(value):
    if isinstance(value, (dt.datetime, dt.date, Decimal)):
        return str(value)
    return value


# Money divided by a count: DuckDB divides decimals in double precision, so at an exact half cent its rounding
# may land one cent from the pipeline's exact decimal division.
PER_CUSTOMER_MONEY = ("average_order_value", "ltv", "cumulative_revenue_per_customer")


def _same(column, got, expected, rounded=PER_CUSTOMER_MONEY):
    if column in rounded and got is not None and expected is not None:
        return abs(Decimal(str(got)) - Decimal(str(expected))) <= Decimal("0.01")
    if isinstance(expected, float) and isinstance(got, str):  # money landed as a decimal(18,2): to the cent
        return abs(Decimal(got) - Decimal(repr(expected))) <= Decimal("0.005")
    if isinstance(expected, float) and isinstance(got, (int, float)):
        return math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9)
    return got == expected


def _differences(got, expected, limit=8, rounded=PER_CUSTOMER_MONEY):
    """The first few (key, column, got, expected) that differ, so a failure says what is wrong, not only where."""
    found = [(key, None, "missing" if key not in got else "extra", None)
             for key in sorted(got.keys() ^ expected.keys(), key=str)]
    for key in sorted(got.keys() & expected.keys(), key=str):
        found += [(key, column, got[key][column], expected[key][column]) for column in expected[key]
                  if not _same(column, got[key][column], expected[key][column], rounded)]
    return found[:limit]


def _keyed(rows, table, columns=None):
    key = contract(table).primary_key
    columns = columns or [c.name for c in contract(table).columns]
    return {tuple(_norm(row[k]) for k in key): {c: _norm(row[c]) for c in columns} for row in rows}


@pytest.fixture(scope="module")
def sql(world):
    return reference_connection(world)


def test_touchpoints_equal_the_reference(tables, sql):
    expected = _query(sql, "select * from touchpoints")
    assert len(tables["touchpoints"]) == len(expected)
    assert not _differences(_keyed(tables["touchpoints"], "touchpoints"), _keyed(expected, "touchpoints"))
    assert any(r["customer_key"].startswith("anon:") for r in expected), "some visitors stay anonymous"


def test_order_attribution_equals_the_reference_for_every_heuristic_model(tables, sql):
    columns = [c.name for c in contract("order_attribution").columns if c.name != "revision"]
    expected = _query(sql, ORDER_ATTRIBUTION)
    got = _keyed(tables["order_attribution"], "order_attribution", columns)
    assert not _differences(got, _keyed(expected, "order_attribution", columns))
    assert {row["model"] for row in expected} == set(HEURISTIC_MODELS)


def _unused_touch_runs(sql) -> list[dict]:
    """Non-converting paths: per customer, the touches in no order's lookback; a path starts at the earliest one
    left and takes those within 30 days of it."""
    unused = _query(sql, """
        select customer_key, touch_id, touch_time, channel from touchpoints k
        where not exists (select 1 from placed p where p.customer_id = k.customer_key
                          and k.touch_time between p.t - interval 30 day and p.t)
        order by customer_key, touch_time, touch_id""")
    runs, current = [], None
    for touch in unused:
        if current and touch["customer_key"] == current["customer"] and touch["touch_time"] <= current["until"]:
            current["channels"].append(touch["channel"])
            current["time"] = touch["touch_time"]
            continue
        current = {"customer": touch["customer_key"], "until": touch["touch_time"] + dt.timedelta(days=30),
                   "time": touch["touch_time"], "channels": [touch["channel"]], "converted": False, "revenue": 0.0}
        runs.append(current)
    return runs


def _markov_removal_reference(paths, by_value: bool = False) -> dict:
    """Removal effects by iterating P(conversion | state) to its fixed point (the pipeline solves it exactly).
    `by_value`: a conversion from a state pays the mean value of the paths that converted from it, and the fixed
    point is the value expected from each state."""
    counts, paid = defaultdict(Counter), defaultdict(float)
    for path in paths:
        states = ["start"] + path["channels"] + ["conversion" if path["converted"] else "null"]
        for here, there in zip(states, states[1:]):
            counts[here][there] += 1
        if path["converted"]:
            paid[states[-2]] += path["revenue"] if by_value else 1.0
    channels = sorted({c for path in paths for c in path["channels"]})

    def expected(removed):
        value = defaultdict(float)
        for _ in range(100_000):
            change = 0.0
            for state, targets in counts.items():
                if state == removed:
                    continue
                new = paid[state] + sum(n * (0.0 if target == removed else value[target])
                                        for target, n in targets.items() if target != "conversion")
                new /= sum(targets.values())
                change, value[state] = max(change, abs(new - value[state])), new
            if change < 1e-15 * max(1.0, abs(value["start"])):
                break
        return value["start"]

    base = expected(None)
    return {c: 1 - expected(c) / base if base else 0.0 for c in channels}


def _shapley_reference(paths, by_value: bool = False) -> dict:
    """Worth of a coalition = conversions (`by_value`: their value) whose channels all lie in it: a sum of
    unanimity games, so each conversion's Shapley value splits equally over its distinct channels."""
    values = {c: 0.0 for path in paths for c in path["channels"]}
    for path in paths:
        if path["converted"]:
            for channel in set(path["channels"]):
                values[channel] += (path["revenue"] if by_value else 1.0) / len(set(path["channels"]))
    return values


def test_data_driven_attribution_equals_the_reference(tables, sql):
    converting = _query(sql, """select order_id, order_time as time, (amount * rate)::double as revenue,
                                       list(channel order by step) as channels, true as converted
                                from paths group by all""")
    week = 7 * 86400
    windows = defaultdict(list)
    for path in converting + _unused_touch_runs(sql):
        windows[int(path["time"].timestamp()) // week * week].append(path)
    expected = []
    def shares_of(values):
        total = sum(values.values())
        return {c: v / total if total else 0.0 for c, v in values.items()}

    def credit(path, channel, shares):
        weight = sum(shares[c] for c in set(path["channels"]))
        return (shares[channel] / weight / path["channels"].count(channel) if weight
                else 1 / len(path["channels"]))

    for start, paths in windows.items():
        for model, reference in (("markov", _markov_removal_reference), ("shapley", _shapley_reference)):
            values, by_value = reference(paths), reference(paths, by_value=True)
            shares, value_shares = shares_of(values), shares_of(by_value)
            conversions, revenue = defaultdict(float), defaultdict(float)
            for path in (p for p in paths if p["converted"]):
                for channel in path["channels"]:
                    conversions[channel] += credit(path, channel, shares)
                    revenue[channel] += credit(path, channel, value_shares) * path["revenue"]
            window_start = dt.datetime.fromtimestamp(start, dt.timezone.utc)
            expected += [{"window_start": window_start, "window_end": window_start + dt.timedelta(days=7),
                          "model": model, "channel": c, "value": values[c], "share": shares[c],
                          "standard_error": 0.0, "conversions": conversions[c], "revenue": round(revenue[c], 2),
                          "revenue_effect": by_value[c], "revenue_share": value_shares[c],
                          "currency": "EUR", "paths": len(paths)} for c in values]
    for row in expected:  # every channel of both models is one group per window
        row["group_rows"] = sum(r["window_start"] == row["window_start"] for r in expected)
    # The bootstrap's interval columns are draws (seeded): tests/test_bootstrap.py checks them; here, that each
    # fitted row has them and they hold the share they are about.
    columns = [c.name for c in contract("data_driven_attribution").columns
               if c.name != "revision" and c.name not in INTERVAL_COLUMNS]
    got = _keyed(tables["data_driven_attribution"], "data_driven_attribution", columns)
    # revenue: a float sum rounded to cents, which the order of addition may move by one cent
    assert not _differences(got, _keyed(expected, "data_driven_attribution", columns), rounded=("revenue",))
    fitted = [row for row in tables["data_driven_attribution"] if not row.get(RETRACTED)]
    assert fitted and all(row["resamples"] == AttributionConfig().bootstrap_resamples for row in fitted)
    assert all(0 <= row["share_ci_low"] <= row["share_ci_high"] <= 1
               and 0 <= row["revenue_share_ci_low"] <= row["revenue_share_ci_high"] <= 1 for row in fitted)
    held = [row["share_ci_low"] - 1e-12 <= row["share"] <= row["share_ci_high"] + 1e-12 for row in fitted]
    assert sum(held) >= 0.95 * len(held), f"{sum(held)} of {len(held)}"
    assert any(not p["converted"] and len(p["channels"]) > 1 for ps in windows.values() for p in ps)


def test_customers_equal_the_reference(tables, sql):
    expected = _query(sql, "select * exclude (last_seen) from customers")
    got = _keyed(tables["customers"], "customers")
    assert got == _keyed(expected, "customers")
    engagement = {row["social_engagement"] for row in expected}
    assert {"none", "before_first_order", "after_first_order"} <= engagement


def test_channel_attribution_daily_equals_the_reference(tables, sql):
    expected = _query(sql, CHANNEL_ATTRIBUTION_DAILY)
    # Zero rows compared as absent: a stream's correction leaves one where a channel lost its credit (an upsert
    # to zero), an order reversed in full leaves one in a backfill too, and the table rounds conversions to 1e-9.
    got, expected = ({key: row for key, row in _keyed(rows, "channel_attribution_daily").items()
                      if abs(row["conversions"]) > 1e-9 or Decimal(row["revenue"])}
                     for rows in (tables["channel_attribution_daily"], expected))
    # conversions: float sums, compared with a relative tolerance; revenue: rounded to cents from a float sum
    assert not _differences(got, expected, rounded=("revenue",))
    assert {key[1] for key in got} == set(HEURISTIC_MODELS)


def test_retention_cohorts_equal_the_reference(tables, sql):
    expected = retention_reference(sql, "week") + retention_reference(sql, "month")
    assert not _differences(_keyed(tables["retention_cohorts"], "retention_cohorts"),
                            _keyed(expected, "retention_cohorts"))
    for row in tables["retention_cohorts"]:
        assert 0 <= row["retention_rate"] <= row["retention_rate_on_or_after"] <= 1
        assert row["active_customers"] <= row["cohort_size"]


def test_social_impact_equals_the_reference(tables, sql):
    expected = _query(sql, """
        with months as (
            select unnest(generate_series(date_trunc('month', (select min(first_seen) from customers)),
                                          date_trunc('month', (select t from until)), interval 1 month))::date as m),
        bounds as (select m, (m + interval 1 month)::timestamptz as month_end from months),
        first_engaged as (select customer_id, platform, min(t) as t from engagement group by all
                          union all select customer_id, 'all', min(t) from engagement group by all),
        mentions as (
            select e.customer_id, e.platform, e.t,
                   exists (select 1 from engagement r where r.kind = 'brand_reply' and r.customer_id = e.customer_id
                           and r.platform = e.platform and r.t between e.t and e.t + interval 7 day) as answered
            from engagement e where e.kind = 'mention'),
        on_site as (select customer_key as customer_id, min(touch_time) as t from touchpoints
                    where kind = 'session' and customer_key not like 'anon:%' group by all
                    union all select customer_id, min(t) from orders group by all),
        members as (
            select b.m, b.month_end, f.platform,
                   case when exists (select 1 from on_site s where s.customer_id = f.customer_id
                                     and s.t < b.month_end) then 'engaged' else 'social_only' end as "group",
                   f.customer_id
            from bounds b join first_engaged f on f.t < b.month_end
            union all
            select b.m, b.month_end, 'all', 'not_engaged', c.customer_id
            from bounds b join customers c on c.first_seen < b.month_end
            where not exists (select 1 from engagement e where e.customer_id = c.customer_id and e.t < b.month_end)
              and exists (select 1 from on_site s where s.customer_id = c.customer_id and s.t < b.month_end)
            union all
            select b.m, b.month_end, x.platform,
                   case when bool_or(x.answered) then 'mention_answered' else 'mention_unanswered' end, x.customer_id
            from bounds b join (select customer_id, platform, t, answered from mentions
                                union all select customer_id, 'all', t, answered from mentions) x on x.t < b.month_end
            group by b.m, b.month_end, x.platform, x.customer_id),
        firsts as (select p.customer_id, p.t, (select min(q.t) from placed q where q.customer_id = p.customer_id
                                                and q.n = 2) as second_t
                   from placed p where p.n = 1)
        select m.m as month, m.platform, m."group", 'EUR' as currency, count(*) as customers,
               count(*) filter (where exists (select 1 from placed p where p.customer_id = m.customer_id
                                              and p.t >= m.m and p.t < m.month_end)) / count(*) as conversion_rate,
               sum((select count(*) from placed p where p.customer_id = m.customer_id
                    and p.t >= m.m and p.t < m.month_end)) as orders,
               coalesce(sum((select sum(net) from placed p where p.customer_id = m.customer_id
                             and p.t >= m.m and p.t < m.month_end)), 0)::decimal(18, 2) as revenue,
               round(revenue / nullif(orders, 0), 2)::decimal(18, 2) as average_order_value,
               count(*) filter (where exists (select 1 from firsts f where f.customer_id = m.customer_id
                   and f.t >= m.m and f.t < m.month_end and f.t + interval 90 day <= (select t from until)))
                   as first_orders_90d,
               count(*) filter (where exists (select 1 from firsts f where f.customer_id = m.customer_id
                   and f.t >= m.m and f.t < m.month_end and f.t + interval 90 day <= (select t from until)
                   and f.second_t <= f.t + interval 90 day)) / nullif(first_orders_90d, 0) as repeat_rate_90d,
               round(coalesce(sum((select sum(net) from placed p where p.customer_id = m.customer_id
                                   and p.t < m.month_end)), 0) / count(*), 2)::decimal(18, 2) as ltv
        from members m group by all""")
    assert not _differences(_keyed(tables["social_impact"], "social_impact"), _keyed(expected, "social_impact"))


def test_social_impact_effects_point_estimates_equal_the_reference(tables, sql):
    """The values, lifts and sample sizes (the bootstrap's intervals are the pipeline's alone: the test of
    test_social_impact_effects.py holds them to their coverage)."""
    totals = _query(sql, """
        with on_site as (select customer_key as customer_id from touchpoints
                         where kind = 'session' and customer_key not like 'anon:%'
                         union select customer_id from orders),
        firsts as (select customer_id, t, date_trunc('week', t) + interval 7 day as week_end from placed where n = 1),
        before as (select distinct e.customer_id, e.platform from engagement e left join firsts f using (customer_id)
                   where f.t is null or e.t <= f.t),
        members as (select customer_id, platform, 'engaged' as population from before
                    where customer_id in (select customer_id from on_site)
                    union select customer_id, 'all', 'engaged' from before
                    where customer_id in (select customer_id from on_site)
                    union select customer_id, 'all', 'not_engaged' from on_site
                    where customer_id not in (select customer_id from before)),
        bought as (
            select p.customer_id, count(*) as orders, round(sum(p.net), 2) as net,
                   bool_or(p.n > 1 and p.t <= f.t + interval 90 day) as repeated_90d,
                   bool_or(p.n > 1 and p.t <= f.t + interval 30 day) as retained_30d,
                   bool_or(p.n > 1 and p.t > f.t + interval 30 day and p.t <= f.t + interval 60 day) as retained_60d,
                   bool_or(p.n > 1 and p.t > f.t + interval 60 day and p.t <= f.t + interval 90 day) as retained_90d
            from placed p join firsts f using (customer_id) group by all),
        customer as (
            select m.*, f.week_end, coalesce(b.orders, 0) as orders, coalesce(b.net, 0) as net,
                   coalesce(b.repeated_90d, false) as repeated_90d, coalesce(b.retained_30d, false) as retained_30d,
                   coalesce(b.retained_60d, false) as retained_60d, coalesce(b.retained_90d, false) as retained_90d
            from members m left join firsts f using (customer_id) left join bought b using (customer_id))
        select population, platform, count(*) as customers, count(*) filter (where orders > 0) as converted,
               sum(orders) as orders, sum(net)::double as net,
               count(*) filter (where week_end + interval 30 day <= (select t from until)) as first_orders_30d,
               count(*) filter (where week_end + interval 60 day <= (select t from until)) as first_orders_60d,
               count(*) filter (where week_end + interval 90 day <= (select t from until)) as first_orders_90d,
               count(*) filter (where week_end + interval 90 day <= (select t from until) and repeated_90d)
                   as repeated_90d,
               count(*) filter (where week_end + interval 30 day <= (select t from until) and retained_30d)
                   as retained_30d,
               count(*) filter (where week_end + interval 60 day <= (select t from until) and retained_60d)
                   as retained_60d,
               count(*) filter (where week_end + interval 90 day <= (select t from until) and retained_90d)
                   as retained_90d
        from customer group by all""")
    by = {(row["population"], row["platform"]): row for row in totals}
    metrics = {"conversion": ("converted", "customers"), "order_value": ("net", "orders"),
               "ltv": ("net", "customers"), "repeat_rate_90d": ("repeated_90d", "first_orders_90d"),
               **{f"retention_{n}d": (f"retained_{n}d", f"first_orders_{n}d") for n in (30, 60, 90)}}
    got = {(row["platform"], row["metric"]): row for row in tables["social_impact_effects"]}
    until = _query(sql, "select t from until")[0]["t"]
    assert set(got) == {(platform, metric) for population, platform in by if population == "engaged"
                        for metric in metrics}
    for (platform, metric), row in got.items():
        numerator, denominator = metrics[metric]
        engaged, baseline = by[("engaged", platform)], by[("not_engaged", "all")]
        value = lambda group: group[numerator] / group[denominator] if group[denominator] else None
        assert (row["engaged_n"], row["not_engaged_n"]) == (engaged[denominator], baseline[denominator])
        assert (row["engaged_customers"], row["not_engaged_customers"]) == (engaged["customers"],
                                                                            baseline["customers"])
        assert row["engaged"] == pytest.approx(value(engaged)) and row["not_engaged"] == pytest.approx(
            value(baseline)), (platform, metric)
        if row["lift"] is not None:
            expected = (value(engaged) / value(baseline) - 1 if row["lift_kind"] == "ratio"
                        else value(engaged) - value(baseline))
            assert row["lift"] == pytest.approx(expected), (platform, metric)
            if row["lift_ci_low"] is not None:
                assert row["lift_ci_low"] <= row["lift_ci_high"]
        assert dt.datetime.fromisoformat(str(row["as_of"])) == until


def _pooled(rows, group):
    """A group's months (platform 'all') added up: first orders old enough, of which repeated; orders; revenue."""
    rows = [r for r in rows if r["platform"] == "all" and r["group"] == group]
    firsts = sum(r["first_orders_90d"] for r in rows)
    repeated = sum(round(r["repeat_rate_90d"] * r["first_orders_90d"]) for r in rows if r["first_orders_90d"])
    return firsts, repeated, sum(r["orders"] for r in rows), sum(Decimal(r["revenue"]) for r in rows)


@pytest.mark.parametrize("mode", ["backfill"], indirect=True)  # the larger world: enough customers to see them
def test_social_impact_recovers_the_planted_engagement_effects(world, tables):
    """Planted: engaged customers stay active 120 days on average against 25, and their orders are 1.25 times as
    large. The bounds come from the sample sizes in the table, not from tuning."""
    truth = PlantedTruth()
    engaged, not_engaged = (_pooled(tables["social_impact"], g) for g in ("engaged", "not_engaged"))
    # 90-day repeat rate: higher for the engaged, by a two-proportion z-test at the 5% level.
    (n1, r1, _, _), (n2, r2, _, _) = engaged, not_engaged
    p = (r1 + r2) / (n1 + n2)
    z = (r1 / n1 - r2 / n2) / math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    assert z > 1.96, (r1, n1, r2, n2)
    # Average order value: the ratio is the planted lift within a 95% interval, and that interval excludes 1. Order values vary by
    # the same coefficient of variation in both groups (the lift multiplies prices), measured over all orders.
    values = [float(o["amount"]) for o in world["orders"] if o["status"] == "placed"]
    mean = sum(values) / len(values)
    variation = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) / mean
    (_, _, o1, revenue1), (_, _, o2, revenue2) = engaged, not_engaged
    ratio = float(revenue1 / o1) / float(revenue2 / o2)
    error = ratio * variation * math.sqrt(1 / o1 + 1 / o2)
    assert abs(ratio - truth.engaged_spend_lift) <= 1.96 * error, (ratio, error)
    assert ratio - 1.96 * error > 1, "the lift is visible, not lost in the noise"
    # Per customer, the headline comparison: customers the site knows who engage order in more of their months and
    # are worth more to date than those who do not (they stay longer and spend more).
    # (The direction only: at 500 customers the monthly conversion rates, 0.33 against 0.28, are within each
    # other's noise; counted with the social-only audience among the engaged they pointed the other way, 0.09
    # against 0.27.)
    (m1, c1, ltv1), (m2, c2, ltv2) = (_per_customer(tables["social_impact"], g) for g in ("engaged", "not_engaged"))
    assert c1 / m1 > c2 / m2, (c1, m1, c2, m2)
    assert ltv1 / m1 > ltv2 / m2, (ltv1 / m1, ltv2 / m2)


@pytest.mark.parametrize("mode", ["backfill"], indirect=True)  # 500 customers over 150 days
def test_social_impact_effects_recover_the_planted_effects_with_intervals(tables):
    """On the larger world the planted effects show in social_impact_effects with the planted sign, and the order
    value's interval holds the planted lift (1.25 - 1) and excludes none (tests/test_social_impact_effects.py
    checks the intervals' coverage over 40 worlds)."""
    rows = {row["metric"]: row for row in tables["social_impact_effects"] if row["platform"] == "all"}
    order_value = rows["order_value"]
    assert order_value["lift_ci_low"] <= PlantedTruth().engaged_spend_lift - 1 <= order_value["lift_ci_high"]
    assert order_value["lift_ci_low"] > 0, order_value
    for metric in ("order_value", "ltv", "repeat_rate_90d", "retention_30d", "retention_60d", "retention_90d"):
        assert rows[metric]["lift"] > 0, rows[metric]
    assert rows["ltv"]["lift_ci_low"] > 0 and rows["repeat_rate_90d"]["lift_ci_low"] > 0
    assert rows["order_value"]["engaged_n"] > 50 and rows["repeat_rate_90d"]["not_engaged_n"] > 30


def _per_customer(rows, group):
    """A group's customer-months (platform 'all'), those with an order, and their LTV summed."""
    rows = [r for r in rows if r["platform"] == "all" and r["group"] == group]
    months = sum(r["customers"] for r in rows)
    converted = sum(round(r["conversion_rate"] * r["customers"]) for r in rows)
    return months, converted, sum(Decimal(r["ltv"]) * r["customers"] for r in rows)


@pytest.mark.parametrize("mode", LANDED, indirect=True)
def test_landed_dead_letters_are_the_injected_malformed_records_and_every_record_is_accounted_for(mode, tables):
    records = generate(WORLDS[mode], b"k", malformed=MALFORMED)
    malformed = [r.malformed for r in records if r.malformed]
    assert len(tables["dead_letters"]) == len(malformed) > 0
    reasons = set().union(*(MALFORMED_KINDS[kind] for kind in malformed))
    assert {row["reason"] for row in tables["dead_letters"]} <= reasons
    assert all(row["topic"] and row["error"] for row in tables["dead_letters"])
    assert all(row["value"] is not None for row in tables["dead_letters"])  # kept in the writer's private store
    valid = sum(len(events) for events in records_by_topic(WORLDS[mode], b"k").values())
    committed = sum(row["next_offset"] for row in tables["source_offsets"])
    assert committed == len(records) == valid + len(malformed), "records in = landed + dead-lettered"
