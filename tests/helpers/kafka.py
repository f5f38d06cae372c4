"""Reading a topic from the beginning, outside any consumer group."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

Records = list[ConsumerRecord[Any, Any]]


async def read_records(bootstrap: str, topic: str, partitions: int,
                       until: Callable[[Records], bool], timeout: float = 20.0) -> Records:
    """Records of partitions 0 … ``partitions``-1 until ``until(records)`` or the timeout."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records: Records = []
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        deadline = asyncio.get_running_loop().time() + timeout
        while not until(records) and asyncio.get_running_loop().time() < deadline:
            for part in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records
