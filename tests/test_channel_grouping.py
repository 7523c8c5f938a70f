"""GA4 default channel grouping, table-driven: each row is a session as it arrives and the channel GA4 gives it."""
import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.channel_grouping import CHANNELS, ChannelRules, Traffic, ga4_channel, session_traffic, site_name, social_channel


def session(source=None, medium=None, campaign=None, referrer=None):
    return {"utm_source": source, "utm_medium": medium, "utm_campaign": campaign, "referrer": referrer}


CASES = [
    # (session, source, medium, channel)
    (session(), "(direct)", "(none)", "Direct"),
    (session("google", "cpc", "cross-network_pmax"), "google", "cpc", "Cross-network"),
    (session("google", "cpc", "shopping_feed"), "google", "cpc", "Paid Shopping"),
    (session("amazon", "paid"), "amazon", "paid", "Paid Shopping"),
    (session("google", "cpc", "brand_search"), "google", "cpc", "Paid Search"),
    (session("bing", "ppc"), "bing", "ppc", "Paid Search"),
    (session("facebook", "paid_social", "autumn_launch"), "facebook", "paid_social", "Paid Social"),
    (session("linkedin", "cpc"), "linkedin", "cpc", "Paid Social"),
    (session("youtube", "paid_video"), "youtube", "paid_video", "Paid Video"),
    (session("gdn", "display"), "gdn", "display", "Display"),
    (session("adnetwork", "cpm"), "adnetwork", "cpm", "Display"),
    (session("partnernet", "retargeting"), "partnernet", "retargeting", "Paid Other"),
    (session(referrer="https://www.etsy.com/listing/1"), "etsy", "referral", "Organic Shopping"),
    (session("instagram", "social", "community_posts"), "instagram", "social", "Organic Social"),
    (session(referrer="https://l.instagram.com/"), "instagram", "referral", "Organic Social"),
    (session("newsletter", "social-network"), "newsletter", "social-network", "Organic Social"),
    (session(referrer="https://www.youtube.com/watch?v=x"), "youtube", "referral", "Organic Video"),
    (session("myblog", "video"), "myblog", "video", "Organic Video"),
    (session(referrer="https://www.google.com/"), "google", "organic", "Organic Search"),
    (session(referrer="https://www.google.co.uk/search?q=bags"), "google", "organic", "Organic Search"),
    (session(referrer="https://duckduckgo.com/"), "duckduckgo", "organic", "Organic Search"),
    (session(referrer="https://blog.travelgear.example/review"), "blog.travelgear.example", "referral", "Referral"),
    (session("partner-site", "link"), "partner-site", "link", "Referral"),
    (session("newsletter", "email", "weekly_digest"), "newsletter", "email", "Email"),
    (session("e-mail", None), "e-mail", "(not set)", "Email"),
    (session("awin", "affiliate"), "awin", "affiliate", "Affiliates"),
    (session("spotify", "audio"), "spotify", "audio", "Audio"),
    (session("sms", "text"), "sms", "text", "SMS"),
    (session("firebase", "app_push"), "firebase", "app_push", "Mobile Push Notifications"),
    (session("flyer", "print"), "flyer", "print", "Unassigned"),
    (session("Google", "CPC"), "google", "cpc", "Paid Search"),  # GA4 is not case sensitive
]


@pytest.mark.parametrize("raw, source, medium, channel", CASES)
def test_ga4_default_channel_group(raw, source, medium, channel):
    traffic = session_traffic(raw)
    assert (traffic.source, traffic.medium) == (source, medium)
    assert ga4_channel(traffic) == channel


def test_every_channel_is_covered_by_the_table():
    assert {channel for *_, channel in CASES} == set(CHANNELS)


def test_order_decides_between_overlapping_rules():
    # Shopping campaign + paid medium on a search engine: Paid Shopping comes before Paid Search.
    assert ga4_channel(Traffic("google", "cpc", "summer_shopping")) == "Paid Shopping"
    # A social source with an organic medium and a video medium: Organic Social is tried before Organic Video.
    assert ga4_channel(Traffic("facebook", "video", "(not set)")) == "Organic Social"


@pytest.mark.parametrize("url, name", [("https://www.google.com/", "google"), ("http://m.facebook.com/x", "facebook"),
                                       ("news.citymag.example", "news.citymag.example")])
def test_site_names(url, name):
    assert site_name(url) == name


def test_short_link_hosts_that_are_known_sources_stay_whole():
    assert session_traffic(session(referrer="https://t.co/abc")) == Traffic("t.co", "referral", "(not set)")
    assert ga4_channel(session_traffic(session(referrer="https://lnkd.in/x"))) == "Organic Social"


def test_social_interactions_are_paid_or_organic_social():
    assert social_channel({"is_paid": True, "platform": "tiktok"}) == "Paid Social"
    assert social_channel({"is_paid": False, "platform": "reddit"}) == "Organic Social"


def test_config_file_adds_sources_and_rules_before_ga4s(tmp_path):
    config = tmp_path / "channels.json"
    config.write_text(json.dumps({"sources": {"social": ["Mastodon.social"], "search": ["kagi"]},
                                  "rules": [{"channel": "Partners", "medium": ["partner"]},
                                            {"channel": "Podcasts", "source": {"regex": "^pod"}}]}))
    rules = ChannelRules.from_file(config)
    assert rules.session_channel(session("mastodon.social", "cpc"))[1] == "Paid Social"
    assert rules.session_channel(session(referrer="https://kagi.com/search"))[1] == "Organic Search"
    assert rules.session_channel(session("anyone", "partner"))[1] == "Partners"
    assert rules.session_channel(session("podnews", "audio"))[1] == "Podcasts"
    assert ChannelRules().session_channel(session("anyone", "partner"))[1] == "Unassigned"
    config.write_text(json.dumps({"sources": {"radio": ["x"]}}))
    with pytest.raises(ValueError, match="unknown source category"):
        ChannelRules.from_file(config)


def test_assign_session_channels_transform():
    from transforms.channel_grouping import AssignSessionChannels

    sessions = [dict(session("google", "cpc"), session_id="a"), dict(session(), session_id="b")]
    with TestPipeline(runner="FnApiRunner") as pipeline:
        channels = (pipeline | beam.Create(sessions) | AssignSessionChannels()
                    | beam.Map(lambda s: (s["session_id"], s["source"], s["medium"], s["channel"])))
        assert_that(channels, equal_to([("a", "google", "cpc", "Paid Search"), ("b", "(direct)", "(none)", "Direct")]))
