"""Consumer lag measured on a real consumer of the embedded broker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from binbaton.service.telemetry.metrics import Metrics, update_consumer_lag


async def test_consumer_lag_follows_the_position(
    broker: str, unique_prefix: str,
    create_topics: Callable[[dict[str, int]], Awaitable[dict[str, int]]],
) -> None:
    topic = f"{unique_prefix}.bin.0"
    await create_topics({topic: 1})
    producer = AIOKafkaProducer(bootstrap_servers=broker, enable_idempotence=False)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=f"r{i}".encode())
    finally:
        await producer.stop()

    metrics = Metrics()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        await update_consumer_lag(metrics, consumer)
        labels = {"topic": topic, "partition": "0"}
        assert metrics.registry.get_sample_value("binbaton_consumer_lag", labels) == 10
        read = 0
        while read < 4:
            batch = await consumer.getmany(partition, timeout_ms=1000, max_records=4 - read)
            read += len(batch.get(partition, []))
        await update_consumer_lag(metrics, consumer)
        assert metrics.registry.get_sample_value("binbaton_consumer_lag", labels) == 6
    finally:
        await consumer.stop()
