"""`binbaton results --latest` prints only results produced after it started, even where the
embedded broker reports a partition's end offset short (a write of several records)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

from aiokafka import AIOKafkaProducer
from binbaton.schemas.codec import encode
from binbaton.schemas.messages import Result
from binbaton.service.kafka.client import ResultFollower
from binbaton.service.kafka.config import KafkaConfig
from binbaton.service.kafka.topics import TopicsConfig

BINBATON = str(Path(sys.executable).with_name("binbaton"))


async def write_old_results(producer: AIOKafkaProducer, topic: str) -> None:
    """200 old results, several per write (what shortens the broker's end offset)."""
    acks = [await producer.send(topic, encode(Result(id=f"old-{i}", status="ok")),
                                key=f"old-{i}".encode()) for i in range(200)]
    await asyncio.gather(*acks)


async def test_results_latest_shows_only_new_results(broker: str, unique_prefix: str,
                                                     create_topics) -> None:
    await create_topics(TopicsConfig(prefix=unique_prefix, num_bins=1))
    topic = f"{unique_prefix}.results"
    producer = AIOKafkaProducer(bootstrap_servers=broker, enable_idempotence=False,
                                linger_ms=50)
    await producer.start()
    try:
        await write_old_results(producer, topic)
        process = await asyncio.create_subprocess_exec(
            BINBATON, "results", "--latest", "--count", "3", "--timeout", "60",
            "--bootstrap-servers", broker, "--topic-prefix", unique_prefix,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        # New results until it has printed three (it may start after the first few).
        sent = 0
        while process.returncode is None and sent < 200:
            await producer.send_and_wait(topic, encode(Result(id=f"new-{sent}", status="ok")),
                                         key=f"new-{sent}".encode())
            sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 0.3)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        await producer.stop()
    assert process.returncode == 0, stderr.decode()
    ids = [json.loads(line)["id"] for line in stdout.decode().splitlines()]
    assert len(ids) == 3 and all(i.startswith("new-") for i in ids), ids


async def test_a_follower_from_now_skips_the_rest_of_the_last_write(
    broker: str, unique_prefix: str, create_topics
) -> None:
    """Right after a write of many records the broker's end offset is that write's first
    offset + 1: seeking there alone would hand over the rest of the write."""
    await create_topics(TopicsConfig(prefix=unique_prefix, num_bins=1))
    topic = f"{unique_prefix}.results"
    producer = AIOKafkaProducer(bootstrap_servers=broker, enable_idempotence=False,
                                linger_ms=50)
    await producer.start()
    try:
        await write_old_results(producer, topic)
        async with ResultFollower(KafkaConfig(bootstrap_servers=broker), topic,
                                  from_beginning=False) as follower:
            await producer.send_and_wait(topic, encode(Result(id="new", status="ok")),
                                         key=b"new")
            seen = await follower.collect(["new"], timeout=20)
            for _ in range(3):
                await follower.poll()
    finally:
        await producer.stop()
    assert "new" in seen
    assert [r.id for r in follower.received] == ["new"]
