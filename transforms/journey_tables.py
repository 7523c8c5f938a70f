"""CustomerJourneyTables: the decoded topics in, every output table out, each a PCollection of rows that match
its contract in schemas/tables/.

    web_sessions, orders ─ StitchIdentities ─┐
    social_interactions ─────────────────────┴ CustomerTouches ─ touchpoints
                                                     │
                                   AttributeOrders ──┼─ order_attribution ─ ChannelAttributionDaily
                                                     └─ paths ─ DataDrivenAttribution
    touches, orders, social, attribution ─ CustomerProfiles ─ customers
                                                 └ WholeTables: retention_cohorts, social_impact,
                                                   social_impact_effects (running totals)
"""
from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam

import schemas
from transforms.channel_attribution import ChannelAttributionDaily
from transforms.customer_journeys import (AttributeOrders, CustomerTouches, DataDrivenAttribution, JourneyConfig,
                                          StitchIdentities)
from transforms.customer_profiles import CustomerProfiles
from transforms.decode_events import DEAD_LETTERS, DecodeEvents, EventDecoder
from transforms.failed_events import FAILED
from transforms.retention import RETENTION_COHORTS
from transforms.social_impact import social_impact_table
from transforms.social_impact_effects import RESAMPLES, SEED, social_impact_effects_table
from transforms.whole_table import WholeTables

TABLES = ("touchpoints", "order_attribution", "channel_attribution_daily", "data_driven_attribution", "customers",
          "retention_cohorts", "social_impact", "social_impact_effects")


@dataclass(frozen=True)
class TablesConfig:
    journeys: JourneyConfig = JourneyConfig()
    data_driven_window_days: float = 7.0
    update_every_s: int | None = 60  # how often a stream re-emits the all-of-history tables; None: at its end
    replay_keyed_state: bool = False  # bounded input (a backfill): stateful steps replayed per key in memory
    bootstrap_resamples: int = RESAMPLES  # social_impact_effects' intervals: replicates, 0 for none
    bootstrap_seed: int = SEED


def touchpoint_row(customer_key: str, touch: dict) -> dict:
    return {"touch_id": touch["touch_id"], "customer_key": customer_key, "touch_time": touch["time"],
            "kind": touch["kind"], "channel": touch["channel"], "source": touch["source"] or "(direct)",
            "medium": touch["medium"] or "(none)", "campaign": touch["campaign"] or "(not set)",
            "platform": touch["platform"], "view_through": touch["view_through"]}


class CustomerJourneyTables(beam.PTransform):
    """{"web_sessions", "social_interactions", "orders"} (decoded, event-timestamped) → {table name: rows} for
    each of TABLES, and FAILED: the events a step failed on (transforms/failed_events.py), held back from it."""

    def __init__(self, config: TablesConfig = TablesConfig()):
        super().__init__()
        self.config = config

    def expand(self, topics):
        config = self.config
        sessions, social, orders = topics["web_sessions"], topics["social_interactions"], topics["orders"]
        replay = config.replay_keyed_state
        stitched = (sessions, orders) | "Stitch" >> StitchIdentities(config.journeys, replay)
        keyed_touches = (stitched, social) | "Touches" >> CustomerTouches(config.journeys)
        touches = keyed_touches["touches"]
        attributed = (touches, orders) | "Attribute" >> AttributeOrders(config.journeys, replay)
        profiles = {"touches": touches, "orders": orders, "social_interactions": social, "web_sessions": sessions,
                    "order_attribution": attributed["order_attribution"]} | "Profiles" >> CustomerProfiles(
            config.update_every_s, config.journeys.rates)
        in_reporting_currency = {"currency": config.journeys.rates.reporting_currency}
        tables = {
            "touchpoints": touches | "TouchpointRows" >> beam.MapTuple(touchpoint_row),
            "order_attribution": attributed["order_attribution"],
            "channel_attribution_daily": attributed["order_attribution"] | "Daily" >> ChannelAttributionDaily(
                config.update_every_s, replay),
            "data_driven_attribution": attributed["paths"] | "DataDriven" >> DataDrivenAttribution(
                config.data_driven_window_days, config.journeys),
            "customers": profiles | "CustomerRows" >> beam.Map(lambda profile: profile.row()),
            **(profiles | "WholeTables" >> WholeTables(RETENTION_COHORTS, social_impact_table(),
                                                       social_impact_effects_table(config.bootstrap_resamples,
                                                                                   config.bootstrap_seed))),
        }
        for name in ("customers", "retention_cohorts", "social_impact", "social_impact_effects",
                     "data_driven_attribution"):
            tables[name] = tables[name] | f"Currency{name}" >> beam.Map(lambda row: {**row, **in_reporting_currency})
        tables[FAILED] = (keyed_touches[FAILED], attributed[FAILED]) | "FailedEvents" >> beam.Flatten()
        return tables


class TablesFromMessages(beam.PTransform):
    """Kafka messages (decoded by the source) → every output table and the dead letters, {table name: rows}: the
    messages that did not decode, and the events a step failed on."""

    def __init__(self, decoder: EventDecoder, config: TablesConfig = TablesConfig()):
        super().__init__()
        self.decoder = decoder
        self.config = config

    def expand(self, messages):
        decoded = messages | "Decode" >> DecodeEvents(self.decoder)
        tables = {t: decoded[t] for t in schemas.TOPICS} | "Journeys" >> CustomerJourneyTables(self.config)
        kafka_topics = self.decoder.kafka_topics
        failed = tables.pop(FAILED) | "FailedEventRows" >> beam.Map(lambda failed: failed.row(kafka_topics))
        dead = decoded[DEAD_LETTERS] | "DeadLetterRows" >> beam.Map(lambda dead: dead.row())
        tables["dead_letters"] = (dead, failed) | "DeadAndFailed" >> beam.Flatten()
        return tables
