"""Identity stitching and per-customer attribution in Beam, checked against an independent DuckDB SQL reference
computed from the same generated events."""
import datetime as dt
import random
from collections import defaultdict

import apache_beam as beam
import duckdb
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from pipelines.generate import GeneratorConfig, records_by_topic
from transforms.channel_grouping import ChannelRules
from transforms.attribution import markov_removal_effects
from transforms.customer_journeys import (LOGGED_IN, STITCHED, AttributeOrders, CustomerTouches, DataDrivenAttribution,
                                           JourneyConfig, StitchIdentities, _RouteSession)
from transforms.failed_events import FAILED
from transforms.json_lines import AppendJsonLines, read_json_lines

LOOKBACK_DAYS = 30


@pytest.fixture(scope="module")
def world():
    return records_by_topic(GeneratorConfig(customers=400, days=45, seed=17), b"k")


def _timestamped(pipeline, label, records, time_field="event_time"):
    return (pipeline | f"Create{label}" >> beam.Create(records)
            | f"Time{label}" >> beam.Map(lambda r: TimestampedValue(r, Timestamp.from_utc_datetime(r[time_field]))))


def _run(world, tmp_path, replay=False):
    out, paths_out, fitted_out = (str(tmp_path / name) for name in ("attribution.jsonl", "paths.jsonl", "fitted.jsonl"))
    with TestPipeline(runner="FnApiRunner") as pipeline:
        sessions = _timestamped(pipeline, "Sessions", world["web_sessions"])
        social = _timestamped(pipeline, "Social", world["social_interactions"])
        orders = _timestamped(pipeline, "Orders", world["orders"])
        config = JourneyConfig()
        keyed = (sessions, orders) | StitchIdentities(config, replay)
        touches = (keyed, social) | CustomerTouches(config)
        outputs = (touches["touches"], orders) | AttributeOrders(config, replay)
        assert_that((touches[FAILED], outputs[FAILED]) | "Failed" >> beam.Flatten(), equal_to([]),
                    label="NoStepFailed")
        attribution = outputs["order_attribution"]
        _ = attribution | beam.ParDo(AppendJsonLines(out))
        _ = outputs["paths"] | "WritePaths" >> beam.ParDo(AppendJsonLines(paths_out))
        _ = (outputs["paths"] | DataDrivenAttribution(window_days=1000)
             | "WriteFitted" >> beam.ParDo(AppendJsonLines(fitted_out)))
    return {"rows": read_json_lines(out), "paths": read_json_lines(paths_out), "fitted": read_json_lines(fitted_out)}


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
def outputs(world, tmp_path_factory):
    return _run(world, tmp_path_factory.mktemp("journeys"))


@pytest.fixture(scope="module")
def rows(outputs):
    return outputs["rows"]


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
        credited = [r for r in by_order[order_id]["last_touch"] if r["credit"] == 1]
        assert [r["touch_index"] for r in credited] == [len(path) - 1], order_id
        assert credited[0]["channel"] == path[-1], order_id
        for model, model_rows in by_order[order_id].items():
            assert sum(r["credit"] for r in model_rows) == pytest.approx(1.0), (order_id, model)
            amount = float(next(o["amount"] for o in world["orders"] if o["order_id"] == order_id))
            assert sum(r["revenue_credit"] for r in model_rows) == pytest.approx(amount), (order_id, model)


def test_a_backfill_replaying_keyed_state_in_memory_emits_the_same_rows_and_paths(world, outputs, tmp_path):
    replayed = _run(world, tmp_path, replay=True)
    canonical = lambda records: sorted(map(repr, records))
    for name in ("rows", "paths", "fitted"):
        assert canonical(replayed[name]) == canonical(outputs[name]), name


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


def test_paths_cover_each_touch_once_converting_or_not(world, outputs):
    paths = outputs["paths"]
    converting = [p for p in paths if p["converted"]]
    assert len(converting) == sum(1 for o in world["orders"] if o["status"] == "placed")
    non_converting = [p for p in paths if not p["converted"]]
    assert non_converting, "journeys that never ordered are paths too"
    used = [i for p in converting for i in p["touch_ids"] if i]
    unused = [i for p in non_converting for i in p["touch_ids"]]
    assert len(unused) == len(set(unused)) and not set(unused) & set(used)


def test_data_driven_models_credit_every_conversion_and_rank_email_above_display(outputs):
    fitted = outputs["fitted"]
    for model in ("markov", "shapley"):
        model_rows = {r["channel"]: r for r in fitted if r["model"] == model}
        assert sum(r["share"] for r in model_rows.values()) == pytest.approx(1.0)
        assert sum(r["conversions"] for r in model_rows.values()) == pytest.approx(
            sum(1 for p in outputs["paths"] if p["converted"]))
        # Planted: an email visit converts 7.5 times as often as a display visit.
        assert model_rows["Email"]["value"] > model_rows["Display"]["value"], model


def _device_event(kind, anonymous_id, day, customer_id=None, session_id=None):
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=day)
    if kind == "order":
        return {"order_id": f"o{day}", "anonymous_id": anonymous_id, "customer_id": customer_id, "event_time": when}
    return dict(session_id=session_id, anonymous_id=anonymous_id, customer_id=customer_id,
                session_start=when, event_time=when)


def test_each_session_goes_to_the_first_link_within_its_own_deadline_whatever_the_arrival_order():
    # lookback 30 days + 1 h lateness: a link counts for sessions up to 30 days before it
    sessions = [_device_event("session", "a", 0, session_id="a0"),    # linked on day 10 (seen after day 40's)
                _device_event("session", "b", 0, session_id="b0"),    # its only link (day 45) is too late
                _device_event("session", "b", 20, session_id="b20")]  # ...but covers this one
    orders = [_device_event("order", "a", 40, "C1"), _device_event("order", "a", 10, "C1"),
              _device_event("order", "b", 45, "C2")]
    for replay in (False, True):
        with TestPipeline(runner="FnApiRunner") as pipeline:
            stitched = ((_timestamped(pipeline, "Sessions", sessions), _timestamped(pipeline, "Orders", orders))
                        | StitchIdentities(JourneyConfig(), replay))
            keyed = (stitched[LOGGED_IN], stitched[STITCHED]) | beam.Flatten()
            assert_that(keyed | beam.MapTuple(lambda owner, touch: (touch["touch_id"], owner)),
                        equal_to([("a0", "C1"), ("b0", "anon:b"), ("b20", "C2")]))


def test_a_bundle_sends_a_devices_link_only_when_it_is_earlier_than_the_one_it_sent():
    route = _RouteSession(ChannelRules(), replay=False)
    route.start_bundle()

    def links(customer, device, day):
        session = _device_event("session", device, day, customer, session_id=f"{device}{day}")
        outputs = route.process(session, Timestamp(0), GlobalWindow())
        return [(key, link) for key, (_, link, _) in (o for o in outputs if not isinstance(o, TaggedOutput))]

    day = lambda d: _device_event("session", "a", d)["session_start"]
    assert links("C1", "a", 20) == [("a", ("C1", day(20)))]
    assert links("C2", "a", 30) == []  # later than the link sent: the device step keeps the earliest
    assert links("C2", "a", 10) == [("a", ("C2", day(10)))]
    assert links("C1", "b", 30) == [("b", ("C1", day(30)))]  # another device


def test_markov_ranks_email_above_display_beyond_sampling_noise(outputs):
    """The planted gap (an Email visit converts 7.5 times as often as a Display visit) survives resampling: over
    200 bootstrap samples of the paths, the 2.5th percentile of Email's removal effect minus Display's is > 0."""
    paths = [(p["channels"], p["converted"]) for p in outputs["paths"]]
    rng = random.Random(11)
    gaps = []
    for _ in range(200):
        effects = markov_removal_effects([paths[rng.randrange(len(paths))] for _ in paths]).removal_effects
        gaps.append(effects.get("Email", 0.0) - effects.get("Display", 0.0))
    assert sorted(gaps)[5] > 0, sorted(gaps)[:10]


def test_stitching_reads_one_state_cell_per_element_and_sends_waiting_sessions_to_the_link():
    """Most devices are new to a stream's worker, so each state cell an element reads is a round trip to the runner:
    a device's link and its waiting sessions are one cell."""
    from apache_beam.transforms.userstate import get_dofn_specs

    from transforms.customer_journeys import _Stitch
    from writer_stubs import Value

    class Timer:
        def set(self, when):
            self.when = when

    stitch, device, expiry = _Stitch(JourneyConfig()), Value(), Timer()
    assert [spec.name for spec in get_dofn_specs(stitch)[0]] == ["device"]
    at = dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc)
    touch = {"touch_id": "s1", "time": at}
    assert list(stitch.process(("d1", ("touch", touch)), device, expiry)) == []  # waits for a link
    assert expiry.when.micros == int((at + stitch.wait).timestamp() * 1e6)
    assert list(stitch.process(("d1", ("link", ("C1", at + dt.timedelta(hours=1)))), device, expiry)) == [
        ("C1", touch)]
    later = {"touch_id": "s2", "time": at + dt.timedelta(days=1)}
    assert list(stitch.process(("d1", ("touch", later)), device, expiry)) == [("C1", later)]
