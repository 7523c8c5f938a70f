"""Reading the benchmarks' topics back with a plain kafka-python consumer, outside any pipeline."""
from __future__ import annotations


def messages(prefix: str):
    """Every message of the three topics, from the beginning to their end offsets at the start."""
    from kafka import TopicPartition

    import schemas
    from transforms.kafka_connection import KafkaConnection

    consumer = KafkaConnection.from_env().consumer(group_id=None, enable_auto_commit=False, max_poll_records=5000,
                                                   max_partition_fetch_bytes=4 * 1024 * 1024)
    partitions = [TopicPartition(prefix + t, p) for t in schemas.TOPICS
                  for p in consumer.partitions_for_topic(prefix + t)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    end = consumer.end_offsets(partitions)
    remaining = {tp for tp in partitions if end[tp] > 0}
    while remaining:
        for tp, batch in consumer.poll(timeout_ms=500).items():
            for message in batch:
                if message.offset < end[tp]:
                    yield message
                if message.offset >= end[tp] - 1:
                    remaining.discard(tp)
    consumer.close()
