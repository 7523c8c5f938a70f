"""GA4's default channel grouping for web sessions and social touches: pure functions and a thin PTransform.

A session's source/medium is derived as GA4 derives it (utm tags first, else the referrer: a search engine is
`organic`, anything else `referral`; nothing at all is `(direct) / (none)`), then the channel rules are tried in
GA4's order and the first that matches wins. Source-category lists and extra rules can be overridden from a JSON
file (`ChannelRules.from_file`):

    {"sources": {"social": ["mastodon.social"], "search": ["kagi"]},
     "rules": [{"channel": "Partners", "medium": ["partner"]}]}

Extra rules are tried before GA4's (a rule matches when every field it names matches; values are lists of exact,
case-insensitive matches, or a "regex" string).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlparse

import apache_beam as beam

CHANNELS = ("Direct", "Cross-network", "Paid Shopping", "Paid Search", "Paid Social", "Paid Video", "Display",
            "Paid Other", "Organic Shopping", "Organic Social", "Organic Video", "Organic Search", "Referral", "Email",
            "Affiliates", "Audio", "SMS", "Mobile Push Notifications", "Unassigned")

# GA4's source categories (abridged to the sites that matter; extend from a config file).
DEFAULT_SOURCES = MappingProxyType({
    "search": frozenset({"google", "bing", "yahoo", "baidu", "duckduckgo", "ecosia", "yandex", "naver", "ask",
                         "aol", "qwant", "startpage", "seznam", "brave"}),
    "social": frozenset({"facebook", "fb", "m.facebook.com", "instagram", "ig", "x", "twitter", "t.co", "linkedin",
                         "lnkd.in", "tiktok", "reddit", "pinterest", "snapchat", "threads", "tumblr", "quora",
                         "whatsapp", "messenger", "discord", "telegram", "mastodon", "bluesky", "vk", "weibo"}),
    "video": frozenset({"youtube", "youtu.be", "vimeo", "twitch", "dailymotion", "wistia"}),
    "shopping": frozenset({"amazon", "ebay", "etsy", "walmart", "shopify", "shopping.google", "aliexpress",
                           "zalando", "idealo", "google shopping"}),
})
PAID_MEDIUM = re.compile(r"^(.*cp.*|ppc|retargeting|paid.*)$")
SHOPPING_CAMPAIGN = re.compile(r"^(.*(([^a-df-z]|^)shop|shopping).*)$")
EMAIL = frozenset({"email", "e-mail", "e_mail", "e mail"})
SOCIAL_MEDIUMS = frozenset({"social", "social-network", "social-media", "sm", "social network", "social media"})
DISPLAY_MEDIUMS = frozenset({"display", "banner", "expandable", "interstitial", "cpm"})
_SUFFIXES = (".com", ".co.uk", ".de", ".fr", ".net", ".org", ".co", ".io")


@dataclass(frozen=True)
class Traffic:
    source: str
    medium: str
    campaign: str


def session_traffic(session: dict, sources=DEFAULT_SOURCES) -> Traffic:
    """Source / medium / campaign of a web session as GA4 would record them (lower case)."""
    source = (session.get("utm_source") or "").strip().lower()
    medium = (session.get("utm_medium") or "").strip().lower()
    campaign = (session.get("utm_campaign") or "").strip().lower() or "(not set)"
    if source or medium:
        return Traffic(source or "(not set)", medium or "(not set)", campaign)
    referrer = session.get("referrer")
    if referrer:
        site = site_name(referrer, frozenset().union(*sources.values()))
        return Traffic(site, "organic" if site in sources["search"] else "referral", campaign)
    return Traffic("(direct)", "(none)", campaign)


def site_name(url: str, known: frozenset = frozenset()) -> str:
    """'https://www.google.co.uk/search?q=x' → 'google'; 'https://blog.example.org/a' → 'blog.example.org';
    a host that is itself a known source ('t.co', 'lnkd.in') stays as it is."""
    host = (urlparse(url if "://" in url else "https://" + url).hostname or "").lower()
    host = host.removeprefix("www.").removeprefix("l.").removeprefix("lm.").removeprefix("m.")
    if host in known:
        return host
    for suffix in _SUFFIXES:
        if host.endswith(suffix) and host.count(".") == suffix.count("."):
            return host[: -len(suffix)]
    return host


@dataclass(frozen=True)
class ChannelRules:
    sources: MappingProxyType = field(default_factory=lambda: DEFAULT_SOURCES)
    extra_rules: tuple = ()  # ({"channel": ..., "source"|"medium"|"campaign": [...] or {"regex": ...}}, ...)

    @classmethod
    def from_file(cls, path: str | Path) -> "ChannelRules":
        config = json.loads(Path(path).read_text())
        sources = {k: set(v) for k, v in DEFAULT_SOURCES.items()}
        for category, names in config.get("sources", {}).items():
            if category not in sources:
                raise ValueError(f"unknown source category {category!r}: one of {', '.join(sources)}")
            sources[category] |= {n.lower() for n in names}
        return cls(MappingProxyType({k: frozenset(v) for k, v in sources.items()}),
                   tuple(_checked_rule(rule) for rule in config.get("rules", ())))

    def channel(self, traffic: Traffic) -> str:
        """The first matching channel, GA4's order, after any extra rules."""
        for rule in self.extra_rules:
            if all(_matches(getattr(traffic, key), want) for key, want in rule.items() if key != "channel"):
                return rule["channel"]
        return ga4_channel(traffic, self.sources)

    def session_channel(self, session: dict) -> tuple[Traffic, str]:
        traffic = session_traffic(session, self.sources)
        return traffic, self.channel(traffic)


def _checked_rule(rule: dict) -> dict:
    if "channel" not in rule or not set(rule) - {"channel"} <= {"source", "medium", "campaign"}:
        raise ValueError(f"a rule needs a channel and only source/medium/campaign conditions: {rule}")
    return rule


def _matches(value: str, want) -> bool:
    if isinstance(want, dict):
        return re.search(want["regex"], value, re.IGNORECASE) is not None
    return value in {w.lower() for w in want}


def ga4_channel(t: Traffic, sources=DEFAULT_SOURCES) -> str:
    source, medium, campaign = t.source, t.medium, t.campaign
    paid = PAID_MEDIUM.match(medium) is not None
    shopping = source in sources["shopping"] or SHOPPING_CAMPAIGN.match(campaign) is not None
    if source == "(direct)" and medium in ("(not set)", "(none)"):
        return "Direct"
    if "cross-network" in campaign:
        return "Cross-network"
    if shopping and paid:
        return "Paid Shopping"
    if source in sources["search"] and paid:
        return "Paid Search"
    if source in sources["social"] and paid:
        return "Paid Social"
    if source in sources["video"] and paid:
        return "Paid Video"
    if medium in DISPLAY_MEDIUMS:
        return "Display"
    if paid:
        return "Paid Other"
    if shopping:
        return "Organic Shopping"
    if source in sources["social"] or medium in SOCIAL_MEDIUMS:
        return "Organic Social"
    if source in sources["video"] or "video" in medium:
        return "Organic Video"
    if source in sources["search"] or medium == "organic":
        return "Organic Search"
    if medium in ("referral", "app", "link"):
        return "Referral"
    if source in EMAIL or medium in EMAIL:
        return "Email"
    if medium == "affiliate":
        return "Affiliates"
    if medium == "audio":
        return "Audio"
    if source == "sms" or medium == "sms":
        return "SMS"
    if medium.endswith("push") or "mobile" in medium or "notification" in medium or source == "firebase":
        return "Mobile Push Notifications"
    return "Unassigned"


def social_channel(interaction: dict) -> str:
    """A social interaction is a Paid or Organic Social touch on its platform."""
    return "Paid Social" if interaction["is_paid"] else "Organic Social"


class AssignSessionChannels(beam.PTransform):
    """web_sessions records → the same records with source, medium and channel added."""

    def __init__(self, rules: ChannelRules | None = None):
        super().__init__()
        self.rules = rules or ChannelRules()

    def expand(self, sessions):
        return sessions | "Channel" >> beam.Map(_with_channel, self.rules)


def _with_channel(session: dict, rules: ChannelRules) -> dict:
    traffic, channel = rules.session_channel(session)
    return {**session, "source": traffic.source, "medium": traffic.medium, "channel": channel}
