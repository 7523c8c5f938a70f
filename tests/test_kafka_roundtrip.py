"""Generated events of all three topics go through the real local broker and come back decoded, unchanged."""
from collections import Counter

import pytest

from pipelines.generate import GeneratorConfig, generate
from pipelines.generate.sinks import produce
from pipelines.kafka_topics import admin_client, ensure_topics, read_topic
from transforms import codec
from transforms.kafka_connection import KafkaConnection, KafkaUnreachable

pytestmark = pytest.mark.integration


def test_produced_events_come_back_equal_in_count_and_content(kafka, topic_prefix):
    records = generate(GeneratorConfig(customers=400, days=20, seed=9), b"test-key", fmt="mixed",
                       late=0.02, out_of_order=0.05, malformed=0.02)
    assert ensure_topics(kafka, prefix=topic_prefix, partitions=4) == {
        topic_prefix + t: 4 for t in ("social_interactions", "web_sessions", "orders")}
    stats = produce(records, kafka, topic_prefix=topic_prefix)
    assert stats.records == len(records)

    for topic in ("social_interactions", "web_sessions", "orders"):
        sent = [r for r in records if r.topic == topic]
        decoded, undecodable, partitions = {}, Counter(), set()
        for message in read_topic(kafka, topic_prefix + topic):
            partitions.add(message.partition)
            try:
                record = codec.decode(topic, message.value, message.headers)
            except codec.DecodeError as error:
                undecodable[error.reason] += 1
                continue
            assert record["event_id"] not in decoded, "no record is delivered twice"
            decoded[record["event_id"]] = record
        expected = {r.event["event_id"]: r.event for r in sent if r.event is not None}
        structurally_bad = [r for r in sent if r.malformed in
                            ("bad_bytes", "truncated", "wrong_schema", "missing_field", "unknown_enum")]
        # Semantically bad records (negative amount, year 9999) decode; the event rules catch those.
        semantically_bad = {r.value for r in sent if r.malformed in ("negative_amount", "far_future")}
        assert len(decoded) + sum(undecodable.values()) == len(sent)
        assert sum(undecodable.values()) == len(structurally_bad)
        assert {k: v for k, v in decoded.items() if k in expected} == expected
        assert len(decoded) - len(expected) == len(semantically_bad)
        assert len(partitions) > 1, "keys spread the topic over its partitions"


def test_same_customer_lands_in_one_partition(kafka, topic_prefix):
    records = generate(GeneratorConfig(customers=50, days=10, seed=4), b"test-key")
    ensure_topics(kafka, prefix=topic_prefix)
    produce([r for r in records if r.topic == "orders"], kafka, topic_prefix=topic_prefix)
    partitions_of = {}
    for message in read_topic(kafka, topic_prefix + "orders"):
        partitions_of.setdefault(message.key, set()).add(message.partition)
    assert partitions_of and all(len(p) == 1 for p in partitions_of.values())


def test_rate_limited_produce_keeps_its_pace(kafka, topic_prefix):
    records = generate(GeneratorConfig(customers=300, days=10, seed=2), b"test-key")[:300]
    assert len(records) == 300
    ensure_topics(kafka, prefix=topic_prefix)
    stats = produce(records, kafka, topic_prefix=topic_prefix, rate=200)
    # Paced sends cannot finish before the 300th is due (1.495 s); the upper bound only catches a stuck pacer.
    assert 299 / 200 <= stats.seconds < 299 / 200 + 5


def test_sasl_plain_listener_takes_the_right_password_only(kafka, topic_prefix, tmp_path):
    import os
    from pathlib import Path

    local = os.environ.get("JOURNEYS_LOCAL_DIR") or Path(__file__).resolve().parents[1] / ".local"
    env_file = Path(local) / "kafka" / "sasl.env"  # written once by deploy/local/kafka.sh
    port = int(kafka.bootstrap_servers.rsplit(":", 1)[1]) + 2
    settings = {"JOURNEYS_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "JOURNEYS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "JOURNEYS_KAFKA_SASL_MECHANISM": "PLAIN"}
    secure = KafkaConnection.from_env(settings, env_file=env_file)
    password = secure.sasl_password.reveal()
    assert password and password not in repr(secure) + secure.describe()
    records = generate(GeneratorConfig(customers=20, days=5, seed=1), b"test-key")
    ensure_topics(secure, prefix=topic_prefix)
    produce(records, secure, topic_prefix=topic_prefix)
    assert sum(1 for _ in read_topic(secure, topic_prefix + "web_sessions")) == sum(
        r.topic == "web_sessions" for r in records)

    password_file = tmp_path / "wrong"
    password_file.write_text("not-the-password\n")
    wrong = KafkaConnection.from_env({**settings, "JOURNEYS_KAFKA_SASL_USERNAME": secure.sasl_username,
                                      "JOURNEYS_KAFKA_SASL_PASSWORD_FILE": str(password_file)})
    # Same listener, same user, wrong password: the broker never lets the client in, and the error says why.
    with pytest.raises(KafkaUnreachable, match="authentication failed at .* SASL PLAIN authentication"):
        admin_client(wrong, timeout_s=5)


def _scram_env_file():
    import os
    from pathlib import Path

    local = os.environ.get("JOURNEYS_LOCAL_DIR") or Path(__file__).resolve().parents[1] / ".local"
    return Path(local) / "kafka" / "scram.env"  # written once by deploy/local/kafka.sh, its user stored by kafka up


def test_sasl_ssl_scram_listener_round_trips_with_the_local_ca(kafka, topic_prefix):
    secure = KafkaConnection.from_env({}, env_file=_scram_env_file())
    assert (secure.security_protocol, secure.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert int(secure.bootstrap_servers.rsplit(":", 1)[1]) == int(kafka.bootstrap_servers.rsplit(":", 1)[1]) + 3
    records = generate(GeneratorConfig(customers=20, days=5, seed=1), b"test-key")
    ensure_topics(secure, prefix=topic_prefix)
    produce(records, secure, topic_prefix=topic_prefix)
    assert sum(1 for _ in read_topic(secure, topic_prefix + "orders")) == sum(r.topic == "orders" for r in records)


@pytest.mark.parametrize("wrong, reason", [
    ({"sasl_password": "not-the-password"}, r"authentication failed at .* SASL SCRAM-SHA-512 authentication of user"),
    ({"ssl_cafile": "/etc/ssl/certs/ca-certificates.crt"},
     r"TLS handshake with .* failed \(\[SSL: CERTIFICATE_VERIFY_FAILED\].*not signed by the CA of"),
])
def test_a_wrong_password_or_ca_is_named_as_such(kafka, wrong, reason):
    import dataclasses

    from transforms.secret import Secret

    secure = KafkaConnection.from_env({}, env_file=_scram_env_file())
    if "sasl_password" in wrong:
        wrong = {"sasl_password": Secret(value=wrong["sasl_password"])}
    with pytest.raises(KafkaUnreachable, match=reason) as refused:
        admin_client(dataclasses.replace(secure, **wrong), timeout_s=5)
    assert secure.sasl_password.reveal() not in str(refused.value)
