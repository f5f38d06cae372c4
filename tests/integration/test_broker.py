"""The embedded broker and topic admin, against the real tansu binary."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from binbaton.service.kafka.broker import BrokerError, EmbeddedBroker, answers_metadata, free_port
from binbaton.service.kafka.topics import TopicsConfig, create_service_topics, topic_plan


def test_broker_starts_answers_and_stops() -> None:
    port = free_port()
    broker = EmbeddedBroker(port=port)
    assert not answers_metadata("127.0.0.1", port)
    with broker:
        assert broker.is_running()
        assert answers_metadata("127.0.0.1", port)
        with pytest.raises(BrokerError, match="already answers"):
            EmbeddedBroker(port=port).start()
    assert not broker.is_running()
    assert not answers_metadata("127.0.0.1", port)


async def test_topics_created_idempotently(broker: str, unique_prefix: str) -> None:
    topics = TopicsConfig(prefix=unique_prefix, num_bins=3, requests_partitions=2,
                          bin_partitions=2, results_partitions=3)
    first = await create_service_topics(broker, topics)
    again = await create_service_topics(broker, topics)
    assert first == again == topic_plan(topics)
    assert set(first) == {f"{unique_prefix}.{n}" for n in
                          ("requests", "bin.0", "bin.1", "bin.2", "results", "dlq", "traces")}
    assert first[f"{unique_prefix}.results"] == 3


async def test_produce_and_consume_through_group(broker: str, unique_prefix: str,
                                                 create_topics) -> None:
    topic = f"{unique_prefix}.echo"
    await create_topics({topic: 2})
    producer = AIOKafkaProducer(bootstrap_servers=broker, enable_idempotence=False)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=f"k{i}".encode())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker, group_id=f"{unique_prefix}.g",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    seen: list[bytes] = []
    try:
        async with asyncio.timeout(20):
            while len(seen) < 10:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    seen.extend(r.value for r in records)
        await consumer.commit()
        committed = [await consumer.committed(TopicPartition(topic, p)) for p in (0, 1)]
    finally:
        await consumer.stop()
    assert sorted(seen) == sorted(f"m{i}".encode() for i in range(10))
    assert sum(c or 0 for c in committed) == 10


async def test_existing_topics_are_kept_as_they_are(broker: str, unique_prefix: str,
                                                    create_topics) -> None:
    from binbaton.service.kafka.topics import TopicError, ensure_topics

    topic = f"{unique_prefix}.few"
    await create_topics({topic: 1})
    assert await ensure_topics(broker, {topic: 3}, strict=False) == {topic: 1}
    with pytest.raises(TopicError, match="fewer partitions"):
        await ensure_topics(broker, {topic: 3})
