"""Identity stitching and per-customer attribution in Beam, checked against an independent DuckDB SQL reference
computed from the same generated events."""
import datetime as dt
from collections import defaultdict

import apache_beam as beam
import duckdb
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from pipelines.generate import GeneratorConfig, simulate
from transforms.channel_grouping import ChannelRules
from transforms.customer_journeys import AttributeOrders, JourneyConfig, StitchIdentities
from transforms.json_lines import AppendJsonLines, read_json_lines

LOOKBACK_DAYS = 30


@pytest.fixture(scope="module")
def world():
    by_topic = defaultdict(list)
    for event in simulate(GeneratorConfig(customers=400, days=45, seed=17), b"k"):
        by_topic[event.topic].append(event.record)
    return by_topic


def _timestamped(pipeline, label, records, time_field="event_time"):
    return (pipeline | f"Create{label}" >> beam.Create(records)
            | f"Time{label}" >> beam.Map(lambda r: TimestampedValue(r, Timestamp.from_utc_datetime(r[time_field]))))


def _run(world, tmp_path):
    out = str(tmp_path / "attribution.jsonl")
    with TestPipeline(runner="FnApiRunner") as pipeline:
        sessions = _timestamped(pipeline, "Sessions", world["web_sessions"])
        social = _timestamped(pipeline, "Social", world["social_interactions"])
        orders = _timestamped(pipeline, "Orders", world["orders"])
        config = JourneyConfig()
        keyed = (sessions, orders) | StitchIdentities(config)
        attribution = (keyed, social, orders) | AttributeOrders(config)
        _ = attribution | beam.ParDo(AppendJsonLines(out))
    return read_json_lines(out)


def reference(world):
    """Per placed order, the channels of its path as SQL sees them: touches of the customer (sessions logged in,
    or on a device the customer ever used logged in or at checkout; social clicks and impressions of identified
    people) in the 30 days up to the order, oldest first."""
    rules = ChannelRules()
    con = duckdb.connect()
    con.execute("create table sessions (session_id text, anonymous_id text, customer_id text, t timestamptz, channel text)")
    con.executemany("insert into sessions values (?, ?, ?, ?, ?)", [
        (s["session_id"], s["anonymous_id"], s["customer_id"], s["session_start"], rules.session_channel(s)[1])
        for s in world["web_sessions"]])
    con.execute("create table social (event_id text, customer_id text, t timestamptz, channel text, kind text)")
    con.executemany("insert into social values (?, ?, ?, ?, ?)", [
        (s["event_id"], s["customer_id"], s["event_time"], "Paid Social" if s["is_paid"] else "Organic Social",
         s["interaction_type"]) for s in world["social_interactions"]])
    con.execute("create table orders (order_id text, customer_id text, anonymous_id text, t timestamptz, status text)")
    con.executemany("insert into orders values (?, ?, ?, ?, ?)", [
        (o["order_id"], o["customer_id"], o["anonymous_id"], o["event_time"], o["status"]) for o in world["orders"]])
    result = con.execute(f"""
        with devices as (
            select distinct anonymous_id, customer_id from sessions where customer_id is not null
            union select distinct anonymous_id, customer_id from orders where anonymous_id is not null),
        touches as (
            select coalesce(s.customer_id, d.customer_id) as customer_id, s.t, s.channel, s.session_id as id
            from sessions s left join devices d on s.anonymous_id = d.anonymous_id
            where coalesce(s.customer_id, d.customer_id) is not null
            union all
            select customer_id, t, channel, event_id from social
            where customer_id is not null
              and kind in ('impression', 'video_view', 'ad_click', 'link_click'))
        select o.order_id, list(t.channel order by t.t, t.id) as path
        from orders o left join touches t
          on t.customer_id = o.customer_id and t.t <= o.t and t.t >= o.t - interval {LOOKBACK_DAYS} day
        where o.status = 'placed'
        group by o.order_id""").fetchall()
    return {order_id: [c for c in path if c is not None] or ["Direct"] for order_id, path in result}


@pytest.fixture(scope="module")
def rows(world, tmp_path_factory):
    return _run(world, tmp_path_factory.mktemp("journeys"))


def test_pipeline_paths_and_credits_equal_the_sql_reference(world, rows):
    expected = reference(world)
    by_order = defaultdict(lambda: defaultdict(list))
    reversed_rows = defaultdict(list)
    for row in rows:
        (by_order[row["order_id"]][row["model"]] if row["status"] == "placed" else reversed_rows[row["order_id"]]).append(row)
    assert set(by_order) == set(expected), "every placed order is attributed, no other"
    for order_id, path in expected.items():
        linear = sorted(by_order[order_id]["linear"], key=lambda r: r["touch_index"])
        assert sorted(r["channel"] for r in linear) == sorted(path), order_id
        assert [r["channel"] for r in sorted(by_order[order_id]["last_touch"], key=lambda r: r["touch_index"])
                if r["credit"] == 1] == [path[-1]] or path.count(path[-1]) > 1
        for model, model_rows in by_order[order_id].items():
            assert sum(r["credit"] for r in model_rows) == pytest.approx(1.0), (order_id, model)
            amount = float(next(o["amount"] for o in world["orders"] if o["order_id"] == order_id))
            assert sum(r["revenue_credit"] for r in model_rows) == pytest.approx(amount), (order_id, model)


def test_anonymous_sessions_before_login_reach_the_customer(world, rows):
    stitched = {r["touch_id"] for r in rows if r["touch_id"]}
    anonymous_then_linked = [s for s in world["web_sessions"] if s["customer_id"] is None and s["session_id"] in stitched]
    assert anonymous_then_linked, "some attributed touches were anonymous when they happened"


def test_cancelled_and_refunded_orders_net_out_to_zero(world, rows):
    reversed_orders = {o["order_id"]: o["status"] for o in world["orders"] if o["status"] != "placed"}
    assert reversed_orders, "the generator cancels and refunds some orders"
    net = defaultdict(float)
    for row in rows:
        if row["model"] == "linear":
            net[row["order_id"]] += row["revenue_credit"]
    for order_id, status in reversed_orders.items():
        assert net[order_id] == pytest.approx(0.0, abs=1e-6), order_id
        assert {r["status"] for r in rows if r["order_id"] == order_id} == {"placed", status}
    placed_only = [o for o in world["orders"] if o["status"] == "placed" and o["order_id"] not in reversed_orders]
    assert all(net[o["order_id"]] == pytest.approx(float(o["amount"])) for o in placed_only)
