"""Synthetic customers and their journeys, seeded and deterministic, with ground truth planted in them.

Each customer arrives at a random time, visits the shop through marketing channels (each visit a web session,
social clicks and impressions before social visits), converts with a probability that depends only on the
visit's channel, and — once a customer — stays active for a lifetime that is longer for socially engaged
customers, who also spend more. Visitors browse anonymously until they log in or check out, so anonymous
sessions can be stitched to the customer later.

What is planted is in PlantedTruth; tests recover it from the events alone.
Every customer draws from its own RNG (seeded by seed and index), so the events do not depend on iteration order.
"""
from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

from transforms.pseudonymise import pseudonymise

DAY = dt.timedelta(days=1)
CENT = Decimal("0.01")


def _frozen(mapping: dict) -> MappingProxyType:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class PlantedTruth:
    """The effects the generator builds in, so that the pipeline's answers can be checked against them."""

    # P(order | session) by the channel that brought the session: the per-channel conversion lift.
    conversion_rate: MappingProxyType = field(default_factory=lambda: _frozen({
        "email": 0.090, "paid_search": 0.075, "direct": 0.065, "organic_search": 0.050, "referral": 0.045,
        "paid_social": 0.040, "organic_social": 0.030, "display": 0.012,
    }))
    # Where visits come from, for customers who are / are not socially engaged.
    channel_mix: MappingProxyType = field(default_factory=lambda: _frozen({
        False: _frozen({"direct": 0.18, "organic_search": 0.25, "paid_search": 0.15, "email": 0.10,
                        "referral": 0.07, "display": 0.10, "paid_social": 0.10, "organic_social": 0.05}),
        True: _frozen({"direct": 0.14, "organic_search": 0.17, "paid_search": 0.10, "email": 0.09,
                       "referral": 0.05, "display": 0.07, "paid_social": 0.16, "organic_social": 0.22}),
    }))
    engaged_share: float = 0.35  # customers who interact with the brand on social media
    # Mean active lifetime after the first order (days): retention differs by engagement.
    lifetime_days: MappingProxyType = field(default_factory=lambda: _frozen({False: 25.0, True: 120.0}))
    engaged_spend_lift: float = 1.25  # engaged customers' orders are this much larger on average
    mean_days_between_visits: float = 4.0
    prospect_patience_visits: float = 8.0  # mean visits a prospect makes before giving up without an order
    login_share_after_first_order: float = 0.8  # P(a returning customer's session is logged in)
    second_device_share: float = 0.3  # customers who also browse on a second, first anonymous device
    guest_checkout_share: float = 0.35  # first orders placed without logging in: stitched via the order
    offline_orders_per_visit: float = 0.003  # orders by phone or in store, with no session behind them
    cancel_share: float = 0.03
    refund_share: float = 0.05


@dataclass(frozen=True)
class GeneratorConfig:
    seed: int = 7
    customers: int = 1000
    days: float = 30.0
    start: dt.datetime = dt.datetime(2026, 9, 1, tzinfo=dt.timezone.utc)
    truth: PlantedTruth = field(default_factory=PlantedTruth)
    first_customer: int = 0  # index of the first customer: a later world of new customers starts past the last one

    @property
    def end(self) -> dt.datetime:
        return self.start + self.days * DAY


@dataclass(frozen=True)
class Event:
    topic: str
    key: str  # the Kafka key: the customer or, before they are known, the anonymous visitor
    record: dict


PLATFORMS_BY_CHANNEL = {
    "paid_social": ("facebook", "instagram", "tiktok", "linkedin", "youtube"),
    "organic_social": ("instagram", "facebook", "x", "reddit", "tiktok", "youtube", "linkedin", "pinterest"),
}
SEARCH_ENGINES = ("google", "bing", "duckduckgo", "ecosia")
REFERRERS = ("https://www.wirecutter-like.example/best-bags", "https://blog.travelgear.example/review",
             "https://forum.packers.example/thread/42", "https://news.citymag.example/gift-guide")
LANDING_PAGES = ("/", "/bags", "/bags/backpacks", "/sale", "/new", "/product/trail-25", "/product/city-tote",
                 "/product/carry-on-40", "/blog/packing-list")
CAMPAIGNS = {
    "paid_social": ("autumn_launch", "retargeting_cart", "lookalike_prospecting"),
    "paid_search": ("brand_search", "generic_backpacks", "shopping_feed"),
    "email": ("weekly_digest", "abandoned_cart", "winback"),
    "display": ("autumn_banners", "retargeting_display"),
    "organic_social": ("community_posts", "creator_collab"),
}
SEARCH_TERMS = ("backpack", "travel backpack", "carry on bag", "laptop backpack", "waterproof tote")
ENGAGEMENT_TYPES = ("like", "comment", "share", "save", "mention", "follow", "direct_message", "brand_reply",
                    "video_view")
DEVICES = ("mobile", "desktop", "tablet")
CURRENCIES = (("EUR", 0.6), ("USD", 0.25), ("GBP", 0.15))
CATALOGUE = tuple((f"SKU-{n:04d}", Decimal(p).quantize(CENT))
                  for n, p in enumerate((19.9, 24.5, 29, 34.9, 39, 45, 49.9, 59, 64.5, 79, 89, 99, 119, 149, 189), 1))


class _Customer:
    """One customer's simulation: its RNG, identity and the events it emits."""

    def __init__(self, config: GeneratorConfig, index: int, pseudonym_key: bytes):
        self.truth = config.truth
        self.config = config
        self.rng = random.Random(f"{config.seed}:{index}")
        self.customer_id = f"C{index:07d}"
        self.engaged = self.rng.random() < self.truth.engaged_share
        self.devices = [(self._uuid(), self.rng.choices(DEVICES, (0.6, 0.32, 0.08))[0])]
        if self.rng.random() < self.truth.second_device_share:
            self.devices.append((self._uuid(), self.rng.choice(DEVICES)))
        self.currency = self.rng.choices([c for c, _ in CURRENCIES], [w for _, w in CURRENCIES])[0]
        self.platform = self.rng.choice(PLATFORMS_BY_CHANNEL["organic_social"])
        self.handle = pseudonymise(f"@{self.platform}_user_{index}", pseudonym_key)
        self.events: list[Event] = []
        self.orders = 0
        self.logged_in_devices: set[str] = set()

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _ms(self, when: dt.datetime) -> dt.datetime:
        return when.replace(microsecond=when.microsecond // 1000 * 1000)

    def _emit(self, topic: str, key: str, record: dict) -> None:
        self.events.append(Event(topic, key, {"event_id": self._uuid(), "schema_version": 1, **record}))

    def simulate(self) -> list[Event]:
        cfg, truth, rng = self.config, self.truth, self.rng
        now = cfg.start + rng.random() * cfg.days * DAY  # arrival
        patience = 1 + int(rng.expovariate(1 / truth.prospect_patience_visits))
        active_until = None
        visits = 0
        if self.engaged:
            self._social_engagement(now - rng.uniform(0, 20) * DAY, cfg.end)
        while now < cfg.end:
            if active_until is None and visits >= patience:
                break
            if active_until is not None and now > active_until:
                break
            visits += 1
            converted = self._visit(now)
            if converted and active_until is None:
                active_until = now + rng.expovariate(1 / truth.lifetime_days[self.engaged]) * DAY
            now += rng.expovariate(1 / truth.mean_days_between_visits) * DAY
        return self.events

    def _social_engagement(self, since: dt.datetime, until: dt.datetime) -> None:
        """Organic interactions of an engaged customer with the brand's accounts, about one a week."""
        when = since
        while True:
            when += self.rng.expovariate(1 / 7) * DAY
            if when >= until:
                return
            kind = self.rng.choice(ENGAGEMENT_TYPES)
            self._emit("social_interactions", self.customer_id, {
                "event_time": self._ms(when), "platform": self.platform, "interaction_type": kind,
                "is_paid": False, "campaign": self.rng.choice(CAMPAIGNS["organic_social"]),
                "post_id": f"post-{self.rng.randrange(500):03d}", "customer_id": self.customer_id,
                "handle_pseudonym": self.handle,
                "sentiment": round(self.rng.uniform(-0.3, 1.0), 2) if kind in ("comment", "mention", "direct_message") else None,
            })

    def _visit(self, start: dt.datetime) -> bool:
        rng, truth = self.rng, self.truth
        mix = truth.channel_mix[self.engaged]
        channel = rng.choices(list(mix), list(mix.values()))[0]
        # The second device shows up later in the customer's life, anonymous at first.
        anonymous_id, device = self.devices[-1] if len(self.devices) > 1 and self.orders and rng.random() < 0.4 else self.devices[0]
        logged_in = anonymous_id in self.logged_in_devices and rng.random() < truth.login_share_after_first_order
        session_id = self._uuid()
        duration = dt.timedelta(seconds=max(10.0, rng.expovariate(1 / 420)))
        utm, referrer, platform = self._traffic(channel)
        if platform:
            self._social_touch(channel, platform, utm.get("utm_campaign"), start)
        converts = rng.random() < truth.conversion_rate[channel]
        if converts and not logged_in and rng.random() >= truth.guest_checkout_share:
            logged_in = True  # logs in to check out
        if logged_in:
            self.logged_in_devices.add(anonymous_id)
        self._emit("web_sessions", self.customer_id if logged_in else anonymous_id, {
            "event_time": self._ms(start + duration), "session_id": session_id, "anonymous_id": anonymous_id,
            "customer_id": self.customer_id if logged_in else None,
            "session_start": self._ms(start), "session_end": self._ms(start + duration),
            "utm_source": utm.get("utm_source"), "utm_medium": utm.get("utm_medium"),
            "utm_campaign": utm.get("utm_campaign"), "utm_content": utm.get("utm_content"),
            "utm_term": utm.get("utm_term"), "referrer": referrer,
            "landing_page": rng.choice(LANDING_PAGES), "device": device,
            "pageviews": 1 + int(rng.expovariate(1 / 4)),
        })
        if converts:
            self._order(start + duration * rng.uniform(0.6, 0.95), session_id, anonymous_id)
            self.logged_in_devices.add(anonymous_id)  # checkout creates the account / remembers the device
        if rng.random() < truth.offline_orders_per_visit:
            self._order(start + rng.uniform(1, 48) * dt.timedelta(hours=1), None, None)
        return converts

    def _traffic(self, channel: str) -> tuple[dict, str | None, str | None]:
        """utm parameters, referrer and social platform of a visit through `channel`, as real traffic looks."""
        rng = self.rng
        if channel == "direct":
            return {}, None, None
        if channel == "organic_search":
            engine = rng.choice(SEARCH_ENGINES)
            return {}, f"https://www.{engine}.com/", None
        if channel == "paid_search":
            return ({"utm_source": "google", "utm_medium": "cpc", "utm_campaign": rng.choice(CAMPAIGNS["paid_search"]),
                     "utm_term": rng.choice(SEARCH_TERMS)}, "https://www.google.com/", None)
        if channel == "email":
            return {"utm_source": "newsletter", "utm_medium": "email",
                    "utm_campaign": rng.choice(CAMPAIGNS["email"])}, None, None
        if channel == "referral":
            return {}, rng.choice(REFERRERS), None
        if channel == "display":
            return ({"utm_source": "gdn", "utm_medium": "display", "utm_campaign": rng.choice(CAMPAIGNS["display"]),
                     "utm_content": f"banner_{rng.randrange(1, 6)}"}, None, None)
        platform = self.platform if self.engaged and channel == "organic_social" else rng.choice(PLATFORMS_BY_CHANNEL[channel])
        medium = "paid_social" if channel == "paid_social" else "social"
        campaign = rng.choice(CAMPAIGNS[channel])
        return ({"utm_source": platform, "utm_medium": medium, "utm_campaign": campaign,
                 "utm_content": f"post-{rng.randrange(500):03d}"}, f"https://{platform}.com/", platform)

    def _social_touch(self, channel: str, platform: str, campaign: str | None, session_start: dt.datetime) -> None:
        """The click on the platform that started a social visit; paid ones were seen as impressions first."""
        rng = self.rng
        paid = channel == "paid_social"
        known = self.customer_id if self.engaged else None
        common = {"platform": platform, "is_paid": paid, "campaign": campaign,
                  "post_id": f"post-{rng.randrange(500):03d}", "customer_id": known,
                  "handle_pseudonym": self.handle if known else None, "sentiment": None}
        if paid:
            for _ in range(rng.randrange(1, 4)):
                seen = session_start - rng.uniform(0.05, 3) * DAY
                self._emit("social_interactions", known or self.devices[0][0],
                           {"event_time": self._ms(seen), "interaction_type": "impression", **common})
        clicked = session_start - dt.timedelta(seconds=rng.uniform(1, 20))
        self._emit("social_interactions", known or self.devices[0][0],
                   {"event_time": self._ms(clicked), "interaction_type": "ad_click" if paid else "link_click", **common})

    def _order(self, placed: dt.datetime, session_id: str | None, anonymous_id: str | None) -> None:
        rng, truth = self.rng, self.truth
        self.orders += 1
        spend = truth.engaged_spend_lift if self.engaged else 1.0
        items = []
        for sku, price in rng.sample(CATALOGUE, rng.randrange(1, 4)):
            items.append({"sku": sku, "quantity": rng.choices((1, 2, 3), (0.75, 0.2, 0.05))[0],
                          "unit_price": (price * Decimal(str(spend))).quantize(CENT)})
        coupon = "WELCOME10" if self.orders == 1 and rng.random() < 0.2 else None
        total = sum(item["unit_price"] * item["quantity"] for item in items)
        if coupon:
            total *= Decimal("0.9")
        order = {"order_id": self._uuid(), "customer_id": self.customer_id, "anonymous_id": anonymous_id,
                 "session_id": session_id, "currency": self.currency, "amount": total.quantize(CENT),
                 "items": items, "coupon": coupon}
        self._emit("orders", self.customer_id, {"event_time": self._ms(placed), "status": "placed", **order})
        roll = rng.random()
        if roll < truth.cancel_share:
            when, status = placed + rng.uniform(0.1, 12) * dt.timedelta(hours=1), "cancelled"
        elif roll < truth.cancel_share + truth.refund_share:
            when, status = placed + rng.uniform(3, 20) * DAY, "refunded"
        else:
            return
        self._emit("orders", self.customer_id, {"event_time": self._ms(when), "status": status, **order})


def simulate(config: GeneratorConfig, pseudonym_key: bytes) -> list[Event]:
    """All events of all customers, in event-time order (ties broken by event id, so the order is stable)."""
    events = []
    for index in range(config.first_customer, config.first_customer + config.customers):
        events.extend(_Customer(config, index, pseudonym_key).simulate())
    events.sort(key=lambda e: (e.record["event_time"], e.record["event_id"]))
    return events
