"""The three event topics on a cluster: create them if missing (idempotent), describe them."""
from __future__ import annotations

import time

import schemas
from transforms.kafka_connection import KafkaConnection, explained_failures

DEFAULT_PARTITIONS = 3


def admin_client(connection: KafkaConnection, timeout_s: float = 30.0):
    """A KafkaAdminClient; kafka-python keeps retrying the bootstrap while a broker is still starting. Raises
    KafkaUnreachable, saying why, when none lets it in within timeout_s."""
    from kafka import KafkaAdminClient

    with explained_failures(connection, timeout_s):
        return KafkaAdminClient(**connection.client_config(), request_timeout_ms=15000,
                                bootstrap_timeout_ms=int(timeout_s * 1000))


def ensure_scram_user(admin_connection: KafkaConnection, user: KafkaConnection) -> None:
    """Stores `user`'s SCRAM credential (its mechanism, name and password) in the cluster, through an admin
    connection: the local broker's SASL_SSL listener (deploy/local/kafka.sh) knows no user until then. Idempotent:
    the same password again replaces the credential with an equal one."""
    from kafka.admin import ScramMechanism, UserScramCredentialUpsertion

    mechanism = ScramMechanism[user.sasl_mechanism.replace("-", "_")]
    admin = admin_client(admin_connection)
    try:
        failed = admin.alter_user_scram_credentials([UserScramCredentialUpsertion(
            user.sasl_username, mechanism, user.sasl_password.reveal(), iterations=8192)])
    finally:
        admin.close()
    if failed.get(user.sasl_username):
        raise RuntimeError(f"the SCRAM user {user.sasl_username} was not stored: {failed[user.sasl_username]}")


def ensure_topics(connection: KafkaConnection, *, prefix: str = "", partitions: int = DEFAULT_PARTITIONS,
                  replication_factor: int = 1) -> dict[str, int]:
    """Create the event topics that do not exist yet; return {kafka topic: partition count}."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    names = [prefix + topic for topic in schemas.TOPICS]
    admin = admin_client(connection)
    try:
        existing = set(admin.list_topics())
        missing = [name for name in names if name not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(name, partitions, replication_factor) for name in missing])
            except TopicAlreadyExistsError:  # created meanwhile by another client: fine
                pass
        described = admin.describe_topics(names)
        return {t["name"]: len(t["partitions"]) for t in described}
    finally:
        admin.close()


class MissingTopic(RuntimeError):
    """A topic the broker does not have (the local broker creates none by itself)."""


def read_topic(connection: KafkaConnection, kafka_topic: str, limit: int | None = None, timeout_s: float = 60.0):
    """Every record of `kafka_topic` from the beginning up to its end at call time (or `limit` of them).

    A look-and-check reader for the CLI and tests, not the pipeline's source: no group, no commits.
    """
    from kafka import TopicPartition

    consumer = connection.consumer(enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=4 * 1024 * 1024)
    try:
        partitions = [TopicPartition(kafka_topic, p) for p in sorted(consumer.partitions_for_topic(kafka_topic) or ())]
        if not partitions:
            raise MissingTopic(f"topic {kafka_topic} does not exist at {connection.describe()}")
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if end[tp] > 0}
        deadline = time.monotonic() + timeout_s
        read = 0
        while remaining and (limit is None or read < limit):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{kafka_topic}: not at the end offsets after {timeout_s}s")
            for tp, batch in consumer.poll(timeout_ms=500).items():
                for message in batch:
                    if message.offset < end[tp] and (limit is None or read < limit):
                        read += 1
                        yield message
                if consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        consumer.close()
