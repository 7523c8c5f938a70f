"""Event-time behaviour of AttributeOrders under TestStream: an order is attributed only once the watermark passes
its time plus the allowed lateness, so a touch that is late but within it still counts; a touch later than that
corrects the rows already emitted (same order, new values); a refund then takes the credit back."""
import datetime as dt

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from transforms.customer_journeys import AttributeOrders, JourneyConfig

T0 = dt.datetime(2026, 9, 1, 12, tzinfo=dt.timezone.utc)
HOUR = dt.timedelta(hours=1)


def _session(session_id, when, medium=None, source=None, referrer=None):
    return {"session_id": session_id, "anonymous_id": "dev-1", "customer_id": "C1", "session_start": when,
            "session_end": when + dt.timedelta(minutes=5), "utm_source": source, "utm_medium": medium,
            "utm_campaign": None, "referrer": referrer, "event_time": when + dt.timedelta(minutes=5)}


ORDER = {"order_id": "O1", "customer_id": "C1", "anonymous_id": "dev-1", "session_id": "s-email",
         "status": "placed", "currency": "EUR", "amount": 100, "event_time": T0}
REFUND = dict(ORDER, status="refunded", event_time=T0 + 2 * HOUR)


def _at(when):
    return Timestamp.from_utc_datetime(when)


def _streaming() -> TestPipeline:
    options = PipelineOptions(["--runner=BundleBasedDirectRunner"])
    options.view_as(StandardOptions).streaming = True
    return TestPipeline(options=options)


def _order_attribution(pipeline, stream: TestStream, config: JourneyConfig):
    """A TestStream of customer-keyed touches and of orders (tags "touches", "orders") → order_attribution rows."""
    inputs = pipeline | stream
    return ((inputs["touches"], inputs["orders"]) | AttributeOrders(config))["order_attribution"]


def test_late_touches_count_until_the_lateness_and_correct_after_it():
    email = _session("s-email", T0 - HOUR, "email", "newsletter")
    late_search = _session("s-search", T0 - 2 * HOUR, referrer="https://www.google.com/")  # arrives late
    very_late_social = _session("s-social", T0 - 3 * HOUR, "social", "instagram")  # after the order fired
    keyed = lambda s: ("C1", {"touch_id": s["session_id"], "time": s["session_start"], "kind": "session",
                              "channel": {"email": "Email", None: "Organic Search", "social": "Organic Social"}[s["utm_medium"]],
                              "source": s["utm_source"], "medium": s["utm_medium"], "campaign": "(not set)",
                              "platform": None, "view_through": False})
    config = JourneyConfig(allowed_lateness_s=1800)
    stream = (TestStream()
              .add_elements([TimestampedValue(keyed(email), _at(email["session_start"]))], tag="touches")
              .add_elements([TimestampedValue(ORDER, _at(T0))], tag="orders")
              .advance_watermark_to(_at(T0 + dt.timedelta(minutes=10)), tag="touches")
              .advance_watermark_to(_at(T0 + dt.timedelta(minutes=10)), tag="orders")
              .add_elements([TimestampedValue(keyed(late_search), _at(T0 + dt.timedelta(minutes=10)))],
                            tag="touches")
              .advance_watermark_to(_at(T0 + HOUR), tag="touches")
              .advance_watermark_to(_at(T0 + HOUR), tag="orders")
              .add_elements([TimestampedValue(keyed(very_late_social), _at(T0 + HOUR))], tag="touches")
              .add_elements([TimestampedValue(REFUND, _at(REFUND["event_time"]))], tag="orders")
              .advance_watermark_to_infinity(tag="touches")
              .advance_watermark_to_infinity(tag="orders"))
    with _streaming() as pipeline:
        rows = _order_attribution(pipeline, stream, config)
        linear = (rows | beam.Filter(lambda r: r["model"] == "linear" and r["status"] == "placed")
                  | beam.Map(lambda r: (r["channel"], round(r["credit"], 4))))
        assert_that(linear, equal_to([
            # fired at T0 + 30 min with the email and the late (but within lateness) search session
            ("Organic Search", 0.5), ("Email", 0.5),
            # corrected when the social session arrived after that: the same order, three touches
            ("Organic Social", 0.3333), ("Organic Search", 0.3333), ("Email", 0.3333),
            # the refund re-emits the order whole (one group, every status): its placed rows unchanged
            ("Organic Social", 0.3333), ("Organic Search", 0.3333), ("Email", 0.3333),
        ]))
        # the refund takes back the whole order value over the corrected path, once
        refunded = (rows | "Refunded" >> beam.Filter(lambda r: r["model"] == "linear" and r["status"] == "refunded")
                    | "RefundCredit" >> beam.Map(lambda r: (r["channel"], round(r["revenue_credit"], 2))))
        assert_that(refunded, equal_to([("Organic Social", -33.33), ("Organic Search", -33.33), ("Email", -33.33)]),
                    label="refund")


def test_a_refund_after_old_touches_left_state_takes_back_the_credit_of_the_whole_path():
    day = dt.timedelta(days=1)
    old_display = _session("s-display", T0 - 25 * day, "display", "dsp")  # leaves state at T0 + 5 days
    email = _session("s-email", T0 - HOUR, "email", "newsletter")
    keyed = lambda s, channel: ("C1", {"touch_id": s["session_id"], "time": s["session_start"], "kind": "session",
                                       "channel": channel, "source": s["utm_source"], "medium": s["utm_medium"],
                                       "campaign": "(not set)", "platform": None, "view_through": False})
    refund = dict(ORDER, status="refunded", event_time=T0 + 20 * day)
    stream = (TestStream()
              .add_elements([TimestampedValue(keyed(old_display, "Display"), _at(old_display["session_start"])),
                             TimestampedValue(keyed(email, "Email"), _at(email["session_start"]))], tag="touches")
              .add_elements([TimestampedValue(ORDER, _at(T0))], tag="orders")
              .advance_watermark_to(_at(T0 + 19 * day), tag="touches")
              .advance_watermark_to(_at(T0 + 19 * day), tag="orders")
              .add_elements([TimestampedValue(refund, _at(refund["event_time"]))], tag="orders")
              .advance_watermark_to_infinity(tag="touches")
              .advance_watermark_to_infinity(tag="orders"))
    with _streaming() as pipeline:
        rows = _order_attribution(pipeline, stream, JourneyConfig())
        refunded = (rows | beam.Filter(lambda r: r["model"] == "linear" and r["status"] == "refunded")
                    | beam.Map(lambda r: (r["touch_index"], r["channel"], round(r["revenue_credit"], 2))))
        assert_that(refunded, equal_to([(0, "Display", -50.0), (1, "Email", -50.0)]))
