"""Each composite transform under CustomerJourneyTables on a hand-checkable input (TestPipeline + assert_that)."""
import datetime as dt
from decimal import Decimal

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from schemas.contracts import RETRACTED
from transforms.attribution import AttributionConfig
from transforms.channel_attribution import (ChannelAttributionDaily, _merged_deltas, _newest_deltas,
                                           _NewestRevisions, _NewestRevisionsInBundle, _revision_delta, row_key)
from transforms.customer_journeys import INTERVAL_COLUMNS, DataDrivenAttribution, JourneyConfig, emission_revision
from transforms.customer_profiles import (CustomerProfiles, _profile_of, acquisition_row, interaction_fact,
                                         updating_global_window)
from transforms.retention import RetentionCohorts, retention_cohorts
from transforms.social_impact import SocialImpact, social_impact
from transforms.whole_table import WholeTable, _ContributionDeltas, _UpdatedRows

T0 = dt.datetime(2026, 9, 7, 10, tzinfo=dt.timezone.utc)  # a Monday
DAY = dt.timedelta(days=1)


def _credit(order_id, channel, index, credit, revision, status="placed", amount=100.0):
    sign = 1 if status == "placed" else -1
    return {"order_id": order_id, "model": "linear", "touch_index": index, "status": status, "touch_id": None,
            "customer_id": "C1", "order_time": T0, "touch_time": T0, "channel": channel, "credit": credit,
            "revenue_credit": sign * amount * credit, "currency": "EUR", "revision": revision}


@pytest.mark.parametrize("replay", [False, True], ids=["keyed-state", "replayed"])
def test_channel_attribution_daily_counts_only_the_latest_revision_of_each_row(replay):
    rows = [_credit("O1", "Email", 0, 0.5, revision=1), _credit("O1", "Organic Search", 1, 0.5, revision=1),
            _credit("O1", "Email", 0, 1.0, revision=0),  # the first attribution, arriving after its correction
            _credit("O2", "Email", 0, 1.0, revision=0),
            _credit("O2", "Email", 0, 1.0, revision=1, status="refunded"),
            _credit("O3", "Display", 0, 1.0, revision=0), _credit("O3", "Referral", 0, 1.0, revision=1)]
    with TestPipeline(runner="FnApiRunner") as pipeline:
        daily = pipeline | beam.Create(rows) | ChannelAttributionDaily(replay=replay)
        assert_that(daily | beam.Map(lambda r: (r["channel"], r["conversions"], r["revenue"], RETRACTED in r)),
                    equal_to([("Email", 0.5, Decimal("50.00"), False),  # O1's half; O2 placed and refunded nets out
                              ("Organic Search", 0.5, Decimal("50.00"), False),
                              ("Referral", 1.0, Decimal("100.00"), False),
                              ("Display", 0.0, Decimal("0.00"), True)]))  # O3's correction left Display no row


def test_a_backfills_daily_attribution_combines_orders_in_a_bounded_table_and_merges_early_flushes_after_grouping():
    rows = [_credit(order, channel, index, credit, revision)
            for revision in (0, 1) for order in ("O1", "O2", "O3")
            for index, (channel, credit) in enumerate([("Email", 0.5), ("Display", 0.5 - 0.5 * revision)])]
    step = _NewestRevisionsInBundle(max_orders=2)
    step.start_bundle()
    flushed = [out.value for row in rows for out in step.process(row, Timestamp(0))]
    flushed += [out.value for out in step.finish_bundle()]
    assert len(flushed) > 3, "the table holds at most two orders: some were flushed before their last rows came"
    for order in ("O1", "O2", "O3"):
        whole = _NewestRevisions().create_accumulator()
        for row in rows:
            if row["order_id"] == order:
                _NewestRevisions().add_input(whole, (row_key(row), _revision_delta(row)))
        parts = [newest for flushed_order, newest in flushed if flushed_order == order]
        assert sorted(_merged_deltas(order, parts)) == sorted(_newest_deltas(order, whole))


def test_channel_attribution_daily_sums_exactly_whatever_the_order():
    # 0.5 × 106.01 = 53.005: a float sum may land either side of the half cent, an exact one rounds it up
    rows = [_credit(f"O{i}", "Email", 0, 0.5, revision=0, amount=106.01) for i in range(3)]
    rows += [_credit(f"O{i}", "Email", 0, 0.5, revision=1, amount=106.01, status="refunded") for i in range(2)]
    with TestPipeline(runner="FnApiRunner") as pipeline:
        daily = pipeline | beam.Create(rows) | ChannelAttributionDaily()
        assert_that(daily | beam.Map(lambda r: (r["conversions"], r["revenue"])),
                    equal_to([(0.5, Decimal("53.01"))]))


def _path(time, channels, converted, revenue=0.0, order_id=None, revision=0):
    return {"customer_id": "C1", "order_id": order_id, "revision": revision, "converted": converted, "time": time,
            "channels": channels, "touch_ids": [f"t{i}" for i in range(len(channels))], "revenue": revenue}


def test_data_driven_attribution_on_two_paths_and_a_corrected_one():
    paths = [_path(T0, ["Direct"], True, 80.0, order_id="O1", revision=0),
             _path(T0, ["Email"], True, 80.0, order_id="O1", revision=1),  # the correction replaces revision 0
             _path(T0 + DAY, ["Display"], False)]
    with TestPipeline(runner="FnApiRunner") as pipeline:
        rows = (pipeline | beam.Create(paths)
                | beam.Map(lambda p: TimestampedValue(p, Timestamp.from_utc_datetime(p["time"])))
                | DataDrivenAttribution(window_days=7))
        # One conversion, through Email; Display only ever led nowhere. Removing Email loses every conversion
        # (removal effect 1), removing Display none (0); Shapley gives Email the one conversion.
        assert_that(rows | beam.Map(lambda r: (r["model"], r["channel"], round(r["value"], 9), r["share"],
                                               r["conversions"], r["revenue"], r["paths"])),
                    equal_to([("markov", "Display", 0.0, 0.0, 0.0, 0.0, 2), ("markov", "Email", 1.0, 1.0, 1.0, 80.0, 2),
                              ("shapley", "Display", 0.0, 0.0, 0.0, 0.0, 2),
                              ("shapley", "Email", 1.0, 1.0, 1.0, 80.0, 2)]))
        # Windows of 7 days aligned to the Unix epoch (a Thursday)
        assert_that(rows | beam.Map(lambda r: (r["window_start"].isoformat(), r["window_end"].isoformat())),
                    equal_to([("2026-09-03T00:00:00+00:00", "2026-09-10T00:00:00+00:00")] * 4), label="window")


def test_data_driven_attribution_lands_the_bootstrap_intervals_of_its_shares():
    # Email converts 6 of 10 paths, Display 1 of 10, Display > Email 3 of 6: the shares are uncertain.
    paths = [_path(T0, ["Email"], True, 50.0, order_id=f"E{i}") for i in range(6)]
    paths += [_path(T0, ["Email"], False) | {"customer_id": f"e{i}"} for i in range(4)]
    paths += [_path(T0, ["Display"], True, 20.0, order_id="D0")]
    paths += [_path(T0, ["Display"], False) | {"customer_id": f"d{i}"} for i in range(9)]
    paths += [_path(T0, ["Display", "Email"], True, 90.0, order_id=f"B{i}") for i in range(3)]
    paths += [_path(T0, ["Display", "Email"], False) | {"customer_id": f"b{i}"} for i in range(3)]
    fits = {}
    with TestPipeline(runner="FnApiRunner") as pipeline:
        timed = (pipeline | beam.Create(paths)
                 | beam.Map(lambda p: TimestampedValue(p, Timestamp.from_utc_datetime(p["time"]))))
        for resamples in (0, 100):
            config = JourneyConfig(attribution=AttributionConfig(bootstrap_resamples=resamples))
            fits[resamples] = timed | f"Fit{resamples}" >> DataDrivenAttribution(7, config)

        def check_intervals(rows):
            assert len(rows) == 4
            for row in rows:
                assert row["resamples"] == 100 and row["paths"] == 26
                assert 0 <= row["share_ci_low"] < row["share"] < row["share_ci_high"] <= 1, row
                assert 0 <= row["revenue_share_ci_low"] < row["revenue_share"] < row["revenue_share_ci_high"] <= 1, row

        assert_that(fits[100], check_intervals)
        assert_that(fits[0] | beam.Map(lambda row: [row[c] for c in INTERVAL_COLUMNS]), equal_to([[None] * 5] * 4),
                    label="none")


def _order(order_id, customer, when, amount, currency="EUR", status="placed"):
    return {"order_id": order_id, "customer_id": customer, "anonymous_id": None, "event_time": when,
            "status": status, "amount": Decimal(amount), "currency": currency}


def _like(customer, when, kind="like", platform="instagram"):
    return {"event_id": f"{customer}-{when.isoformat()}", "customer_id": customer, "event_time": when,
            "platform": platform, "interaction_type": kind, "is_paid": False}


def _profiles(pipeline, orders, interactions):
    def timed(label, records):
        return (pipeline | f"Create{label}" >> beam.Create(records)
                | f"Time{label}" >> beam.Map(lambda r: TimestampedValue(r, Timestamp.from_utc_datetime(r["event_time"]))))

    empty = pipeline | "NoTouches" >> beam.Create([])
    return {"touches": empty, "web_sessions": pipeline | "NoSessions" >> beam.Create([]),
            "order_attribution": pipeline | "NoAttribution" >> beam.Create([]),
            "orders": timed("Orders", orders), "social_interactions": timed("Social", interactions)} | CustomerProfiles()


ORDERS = [_order("A1", "A", T0, "100.00"), _order("A2", "A", T0 + 9 * DAY, "50.00"),
          _order("A2", "A", T0 + 12 * DAY, "50.00", status="refunded"),
          _order("B1", "B", T0 + 1 * DAY, "100.00", currency="USD")]
LIKES = [_like("A", T0 - DAY)]  # A engaged before the first order; B never


def test_customer_profiles_net_out_refunds_and_convert_currencies():
    with TestPipeline(runner="FnApiRunner") as pipeline:
        rows = _profiles(pipeline, ORDERS, LIKES) | beam.Map(lambda p: p.row())
        assert_that(rows | beam.Map(lambda r: (r["customer_id"], r["orders"], r["net_revenue"], r["social_engagement"])),
                    equal_to([("A", 2, Decimal("100.00"), "before_first_order"),
                              ("B", 1, Decimal("92.00"), "none")]))  # USD at the default 0.92


def test_a_profile_counts_each_device_once_however_many_sessions_and_orders_name_it():
    sessions = [{"customer_id": customer, "anonymous_id": device, "session_start": T0}
                for customer, device in [("A", "d1")] * 5 + [("A", "d2"), (None, "d3")]]
    orders = [{**_order("A1", "A", T0 + DAY, "10.00"), "anonymous_id": "d1"},
              {**_order("A2", "A", T0 + 2 * DAY, "10.00"), "anonymous_id": "d4"},
              {**_order("B1", "B", T0 + 2 * DAY, "10.00"), "anonymous_id": "d1"}]  # A's device, B's pair
    with TestPipeline(runner="FnApiRunner") as pipeline:
        created = lambda label, records: pipeline | label >> beam.Create(records)
        rows = ({"touches": created("NoTouches", []), "web_sessions": created("Sessions", sessions),
                 "order_attribution": created("NoAttribution", []), "orders": created("Orders", orders),
                 "social_interactions": created("NoSocial", [])}
                | CustomerProfiles() | beam.Map(lambda p: p.row()))
        assert_that(rows | beam.Map(lambda r: (r["customer_id"], r["devices"])), equal_to([("A", 3), ("B", 1)]))


def test_retention_cohorts_from_all_profiles():
    with TestPipeline(runner="FnApiRunner") as pipeline:
        rows = _profiles(pipeline, ORDERS, LIKES) | RetentionCohorts()
        weekly_all = rows | beam.Filter(lambda r: r["cohort_grain"] == "week" and r["segment_type"] == "all")
        # Both first ordered in the week of T0; A came back in week 1 (refunded in full: active, no revenue).
        assert_that(weekly_all | beam.Map(lambda r: (r["period_index"], r["cohort_size"], r["active_customers"],
                                                     r["retention_rate"], r["net_revenue"])),
                    equal_to([(0, 2, 2, 1.0, Decimal("192.00")), (1, 2, 1, 0.5, Decimal("0.00"))]))


def test_social_impact_compares_engaged_and_not_engaged_customers():
    with TestPipeline(runner="FnApiRunner") as pipeline:
        rows = _profiles(pipeline, ORDERS, LIKES) | SocialImpact()
        everyone = rows | beam.Filter(lambda r: r["platform"] == "all")
        assert_that(everyone | beam.Map(lambda r: (str(r["month"]), r["group"], r["customers"], r["orders"],
                                                   r["revenue"], r["conversion_rate"])),
                    equal_to([("2026-09-01", "engaged", 1, 2, Decimal("100.00"), 1.0),
                              ("2026-09-01", "not_engaged", 1, 1, Decimal("92.00"), 1.0)]))


def test_a_profile_from_an_older_savepoints_whole_values_equals_one_from_lean_ones():
    touch = {"touch_id": "t1", "time": T0 - 2 * DAY, "channel": "Email"}
    likes = [_like("A", T0 - DAY), _like("A", T0 + DAY, kind="impression"), {**_like("A", T0, kind="share"), "is_paid": True}]
    placed = {**_credit("A1", "Email", 0, 1.0, revision=0), "customer_id": "A", "model": "last_touch"}
    first = {**_credit("A1", "Social", 0, 1.0, revision=0), "customer_id": "A", "model": "first_touch"}
    refunded = {**placed, "status": "refunded", "revision": 1}
    linear = {**placed, "model": "linear"}  # not an acquisition model
    devices = ["d1", "d1", "d2"]
    whole = {"touches": [touch], "orders": ORDERS[:3], "interactions": likes,
             "attribution": [placed, first, refunded, linear], "devices": devices}
    lean = {"touches": [(touch["time"], True)], "orders": ORDERS[:3],
            "interactions": [interaction_fact(i) for i in likes],
            "attribution": [acquisition_row(r) for r in (placed, first)], "devices": devices}
    times_alone = {**lean, "touches": [touch["time"]]}  # what a job before first_site_seen grouped
    [old], [older], [new] = _profile_of("A", whole), _profile_of("A", times_alone), _profile_of("A", lean)
    assert old == older == new and new.first_site_seen == T0 - 2 * DAY
    assert (new.acquisition_channel, new.first_touch_channel, new.devices, new.first_seen) == \
        ("Email", "Social", 2, T0 - 2 * DAY)
    assert [e[2] for e in new.engagements] == ["like"]  # an impression and a paid share are no engagement


def test_a_whole_table_sends_the_rows_that_changed_and_retracts_the_keys_that_vanished():
    def cohort(segment, size):
        return {"cohort_grain": "week", "cohort_start": T0.date(), "segment_type": "first_touch_channel",
                "segment": segment, "period_index": 0, "cohort_size": size}

    def rows(totals, earliest, latest):
        return [cohort(segment, sums["size"]) for segment, sums in sorted(totals.items()) if sums["size"] > 0]

    table = "retention_cohorts"
    gatherings = [(table, [("Direct", 0, ({"size": 1}, None, None)), ("Email", 0, ({"size": 1}, None, None)),
                           ("Web", 0, ({"size": 3}, None, None))]),
                  # a late touch: the Direct customer came through Email first
                  (table, [("Direct", 1, ({"size": 0}, None, None)), ("Email", 1, ({"size": 2}, None, None))]),
                  (table, [("Direct", 0, ({"size": 1}, None, None))])]  # an older firing, late: the newer stands
    with TestPipeline(runner="FnApiRunner") as pipeline:
        got = (pipeline | beam.Create(gatherings)
               | beam.ParDo(_UpdatedRows((WholeTable(table, None, rows),))).with_outputs(table))[table]
        assert_that(got | beam.Map(lambda r: (r["segment"], r["cohort_size"], RETRACTED in r)), equal_to([
            ("Direct", 1, False), ("Email", 1, False), ("Web", 3, False),  # Web unchanged: sent once
            ("Email", 2, False), ("Direct", 1, True)]))


def test_one_profile_update_reads_one_state_cell_for_every_whole_table():
    """A state read is a round trip to the runner: what a customer contributed to both tables lives in one cell.
    A newer profile sends each table only what changed, an older one nothing."""
    from writer_stubs import Value

    from transforms.retention import RETENTION_COHORTS
    from transforms.social_impact import social_impact_table

    reads = []

    class Counted(Value):
        def read(self):
            reads.append(1)
            return super().read()

    profile = lambda orders, likes: _profile_of("A", {"touches": [], "orders": orders, "attribution": [],
                                                      "interactions": [interaction_fact(i) for i in likes],
                                                      "devices": []})[0]
    deltas = _ContributionDeltas((RETENTION_COHORTS, social_impact_table()))
    cell = Counted()
    first = list(deltas.process(("A", profile(ORDERS[:1], [])), last=cell))
    assert {table for (table, _), _ in first} == {"retention_cohorts", "social_impact"}
    second = list(deltas.process(("A", profile(ORDERS[:1], LIKES)), last=cell))
    assert list(deltas.process(("A", profile(ORDERS[:1], [])), last=cell)) == []  # older: counted already
    assert len(reads) == 3
    # engaged now: social_impact moves the customer between groups; every change nets out per (table, group)
    moved = merged_contributions_of(first + second)
    assert moved == merged_contributions_of(deltas.process(("B", profile(ORDERS[:1], LIKES)), last=Value()))


def merged_contributions_of(deltas) -> dict:
    """((table, group), (sums, ...)) deltas → their net sums per (table, group), zeros left out."""
    from transforms.whole_table import merged_contributions

    net = merged_contributions((table_group, sums) for table_group, (sums, _, _) in deltas)
    return {key: {k: v for k, v in sums.items() if v} for key, sums in net.items() if any(sums.values())}


def _updating(profiles):
    return profiles | beam.WindowInto(window.GlobalWindows(), trigger=trigger.AfterWatermark(),
                                      accumulation_mode=trigger.AccumulationMode.ACCUMULATING)


@pytest.mark.parametrize("table", [RetentionCohorts, SocialImpact])
def test_a_whole_table_counts_a_customer_once_however_often_their_profile_is_emitted(table):
    full = [_profile_of("A", {"touches": [], "orders": ORDERS[:3], "interactions": [interaction_fact(i) for i in LIKES],
                              "attribution": [], "devices": []})[0],
            _profile_of("B", {"touches": [], "orders": ORDERS[3:], "interactions": [], "attribution": [],
                              "devices": []})[0]]
    # what a stream emitted of A before: one order, no engagement
    early = _profile_of("A", {"touches": [], "orders": ORDERS[:1], "interactions": [], "attribution": [],
                              "devices": []})[0]
    with TestPipeline(runner="FnApiRunner") as pipeline:
        once = pipeline | "Once" >> beam.Create(full) | "Whole" >> table()
        again = _updating(pipeline | "Again" >> beam.Create([early, *full, early])) | "Updating" >> table()
        expected = [_hashable(row) for row in (table is RetentionCohorts and _retention_rows(full) or
                                               social_impact(full, max(p.last_seen for p in full)))]
        assert_that(once | "OnceRows" >> beam.Map(_hashable), equal_to(expected), label="once")
        assert_that(again | "AgainRows" >> beam.Map(_hashable), equal_to(expected), label="again")


def _retention_rows(profiles):
    until = max(p.last_seen for p in profiles)
    return [row for grain in ("week", "month") for row in retention_cohorts([p.history() for p in profiles], grain, until)]


def _hashable(row):
    return tuple(sorted(row.items()))


def test_an_emissions_revision_comes_from_its_facts_alone():
    touches = {"t1": {}, "t2": {}, "t3": {}}
    refund = {"status": "refunded", "amount": Decimal("10.00"), "event_time": T0}
    assert emission_revision(touches, []) == emission_revision(dict(reversed(touches.items())), [])  # any order
    assert emission_revision({**touches, "t4": {}}, []) > emission_revision(touches, [])  # a correction: newer
    assert emission_revision(touches, [refund]) > emission_revision(touches, [])  # a reversal: newer
    assert emission_revision({"t1": {}, "t2": {}, "t9": {}}, []) != emission_revision(touches, [])  # other facts
    assert emission_revision(touches, [refund]) != emission_revision(touches, [{**refund, "amount": Decimal("5")}])


def test_a_collection_already_in_the_window_is_not_windowed_again():
    with TestPipeline(runner="FnApiRunner") as pipeline:
        rows = pipeline | beam.Create([("c1", 1), ("c1", 2)])  # bounded, in the global window
        again = updating_global_window(rows, None)
        assert isinstance(again, beam.PTransform) and not isinstance(again, beam.WindowInto)
        stamped = rows | beam.Map(lambda kv: TimestampedValue(kv, 10)) | beam.WindowInto(
            beam.window.FixedWindows(60))
        assert isinstance(updating_global_window(stamped, None), beam.WindowInto)
        grouped = (rows | "Same" >> again | beam.GroupByKey()
                   | beam.MapTuple(lambda key, values: (key, sorted(values))))
        assert_that(grouped, equal_to([("c1", [1, 2])]))
    # a stream windows again whatever it is in: that starts its elements' panes afresh, as the writer expects
    streaming = beam.Pipeline(options=PipelineOptions(["--streaming"]))
    assert isinstance(updating_global_window(streaming | beam.Create([("c1", 1)]), None), beam.WindowInto)


def test_social_impact_compares_customers_the_site_knows_and_counts_a_social_only_audience_apart():
    def profile(customer, touches, orders, likes):
        return _profile_of(customer, {"touches": touches, "orders": orders, "attribution": [], "devices": [],
                                      "interactions": [interaction_fact(i) for i in likes]})[0]

    october = T0 + 30 * DAY
    people = [profile("A", [], ORDERS[:1], LIKES),  # ordered in September, engaged before
              profile("B", [], ORDERS[3:], []),  # ordered, never engaged
              profile("C", [], [], [_like("C", T0)]),  # engaged, never on the site: reach
              profile("D", [(october, True)], [], [_like("D", T0)]),  # engaged in September, on the site in October
              profile("E", [(T0, False)], [], [])]  # saw an ad, never on the site, never engaged: in no group
    rows = {(r["month"].month, r["platform"], r["group"]): r["customers"]
            for r in social_impact(people, october + DAY)}
    assert {key: n for key, n in rows.items() if key[1] == "all"} == {
        (9, "all", "engaged"): 1, (9, "all", "not_engaged"): 1, (9, "all", "social_only"): 2,
        (10, "all", "engaged"): 2, (10, "all", "not_engaged"): 1, (10, "all", "social_only"): 1}


def test_a_bundles_memo_of_devices_sent_is_bounded_and_every_pair_still_goes_out(monkeypatch):
    from transforms import customer_profiles

    monkeypatch.setattr(customer_profiles, "BUNDLE_MEMO_ENTRIES", 2)
    step = customer_profiles._NewDevices()
    step.start_bundle()
    sessions = [{"customer_id": f"C{i % 5}", "anonymous_id": f"D{i % 5}"} for i in range(20)]
    sent = [pair for session in sessions for pair in step.process(session, window.GlobalWindow())]
    assert len(step.seen) <= 2
    assert set(sent) == {(f"C{i}", f"D{i}") for i in range(5)}
