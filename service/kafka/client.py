"""A client of the service: produce requests, follow results.

Results are read by assigning every partition of the results topic (no consumer group,
nothing committed), so any number of clients can follow them; each de-duplicates by id
(delivery is at-least-once).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from binbaton.schemas.codec import (
    InvalidMessage,
    decode_request,
    decode_result,
    encode,
    from_openai_batch_line,
    now_ms,
    recover_id,
)
from binbaton.schemas.messages import ChatMessage, Request, Result
from binbaton.schemas.settings import UserError
from binbaton.schemas.topics import TopicNames, prefix_of
from binbaton.service.kafka.config import KafkaConfig
from binbaton.service.kafka.topics import existing_partitions
from binbaton.service.telemetry.tracing import (
    CLIENT_SERVICE,
    Telemetry,
    TracingConfig,
    setup_tracing,
)


@dataclass(frozen=True)
class Outgoing:
    """One message for the requests topic; ``at_s`` is its send time from the start."""

    value: bytes
    key: bytes | None
    at_s: float = 0.0


def request_message(request: Request, at_s: float = 0.0) -> Outgoing:
    return Outgoing(value=encode(request), key=request.id.encode(), at_s=at_s)


def raw_message(line: bytes, at_s: float = 0.0) -> Outgoing:
    """A JSONL line sent as it is (the service validates it; one that does not parse is
    dead-lettered there); keyed by its id if readable. An OpenAI batch-file line
    (``{custom_id, method, url, body}``) is sent as the Request it describes."""
    value = from_openai_batch_line(line)
    request_id = recover_id(value)
    return Outgoing(value=value, key=request_id.encode() if request_id else None, at_s=at_s)


@dataclass(frozen=True)
class Sampling:
    """The generation fields of a request built by the client (Request's defaults)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


def checked(request: Request) -> Request:
    """``request`` if the service would accept its fields (a Request built in Python is not
    validated against its bounds); else ``InvalidMessage`` with the service's code."""
    return decode_request(encode(request))


def text_request(prompt: str, sampling: Sampling, request_id: str | None = None) -> Request:
    return checked(Request(id=request_id or uuid.uuid4().hex, prompt=prompt,
                           **_fields(sampling)))


def chat_request(user: str, sampling: Sampling, system: str | None = None,
                 request_id: str | None = None) -> Request:
    """A one-turn conversation (a system message first when given)."""
    turns = [ChatMessage(role="system", content=system)] if system is not None else []
    turns.append(ChatMessage(role="user", content=user))
    return checked(Request(id=request_id or uuid.uuid4().hex, messages=turns,
                           **_fields(sampling)))


def _fields(sampling: Sampling) -> dict[str, Any]:
    fields = asdict(sampling)
    fields["stop"] = list(sampling.stop)
    return fields


async def produce(
    kafka: KafkaConfig,
    topic: str,
    messages: Iterable[Outgoing],
    paced: bool = False,
    on_sent: Callable[[Outgoing], None] | None = None,
    tracing_config: TracingConfig | None = None,
) -> int:
    """Send every message (at its ``at_s`` when ``paced``); waits for all acknowledgements.

    ``on_sent`` is called as each message is handed over. With ``tracing_config``
    (enabled), each message is the root span of its request's trace (``binbaton-client``).
    Returns the number sent.
    """
    telemetry = Telemetry.disabled(CLIENT_SERVICE)
    if tracing_config is not None and tracing_config.enabled:
        telemetry = setup_tracing(CLIENT_SERVICE, tracing_config,
                                  bootstrap_servers=kafka.bootstrap_servers,
                                  traces_topic=TopicNames(prefix_of(topic)).traces)
    producer = AIOKafkaProducer(**kafka.producer_kwargs("binbaton-client"))
    await producer.start()
    try:
        start = time.monotonic()
        acks = []
        for message in messages:
            if paced:
                delay = message.at_s - (time.monotonic() - start)
                if delay > 0:
                    await asyncio.sleep(delay)
            if telemetry.enabled:
                send = telemetry.start_send(topic, message.key, root=True)
                ack = await producer.send(topic, value=message.value, key=message.key,
                                          headers=send.headers)
                acks.append(send.end_when(ack))
            else:
                acks.append(await producer.send(topic, value=message.value, key=message.key))
            if on_sent is not None:
                on_sent(message)
        await asyncio.gather(*acks)
        return len(acks)
    finally:
        await producer.stop()
        if telemetry.enabled:
            await asyncio.to_thread(telemetry.shutdown)


class MissingTopic(UserError):
    """A topic a client reads is not there (no service started, or another prefix)."""


async def wait_for_topic(bootstrap_servers: str, topic: str, timeout: float = 15.0) -> int:
    """Partition count of ``topic`` once it exists (without auto-creating it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="binbaton-client")
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            found = await existing_partitions(admin, [topic])
            if topic in found:
                return found[topic]
            if time.monotonic() > deadline:
                raise MissingTopic(
                    f"topic {topic} does not exist at {bootstrap_servers} (waited {timeout:.0f} s):"
                    f" start the service (`binbaton up`) or create the topics (`binbaton "
                    f"topics`), or check --topic-prefix")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


class ResultFollower:
    """Follows the results topic by assigned partitions; yields each id's first result.

    Not ``from_beginning``: only results produced after ``start`` (the record's timestamp,
    at or after the start). Seeking to the end alone is not enough: the embedded broker
    reports a partition's end offset short when the last write held several records, so
    older results would come through."""

    def __init__(self, kafka: KafkaConfig, topic: str, from_beginning: bool = True) -> None:
        self.kafka = kafka
        self.topic = topic
        self.from_beginning = from_beginning
        self.since_ms: int | None = None  # not from the beginning: when following started
        self.older = 0  # results skipped as produced before ``since_ms``
        self.seen: dict[str, Result] = {}  # id -> its first result
        self.received: list[Result] = []  # every result read, duplicates included
        self.duplicates = 0
        self.undecodable = 0
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self.since_ms = None if self.from_beginning else now_ms()
        kwargs = self.kafka.consumer_kwargs(group_id=None, client_id="binbaton-results")
        kwargs["auto_offset_reset"] = "earliest" if self.from_beginning else "latest"
        self._consumer = AIOKafkaConsumer(**kwargs)
        await self._consumer.start()
        try:
            partitions = await self._partitions()
        except BaseException:
            await self.stop()  # __aexit__ does not run when __aenter__ raises
            raise
        self._consumer.assign(partitions)
        if self.from_beginning:
            await self._consumer.seek_to_beginning(*partitions)
        else:
            await self._consumer.seek_to_end(*partitions)

    async def _partitions(self) -> list[TopicPartition]:
        partitions = await wait_for_topic(self.kafka.bootstrap_servers, self.topic)
        return [TopicPartition(self.topic, p) for p in range(partitions)]

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def __aenter__(self) -> ResultFollower:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def poll(self, timeout_ms: int = 200) -> list[Result]:
        """New (not yet seen) results from one fetch."""
        assert self._consumer is not None
        fresh: list[Result] = []
        batches = await self._consumer.getmany(timeout_ms=timeout_ms)
        for record in (r for part in batches.values() for r in part):
            if self.since_ms is not None and record.timestamp < self.since_ms:
                self.older += 1
                continue
            try:
                result = decode_result(record.value or b"")
            except InvalidMessage:
                self.undecodable += 1
                continue
            self.received.append(result)
            if result.id in self.seen:
                self.duplicates += 1
                continue
            self.seen[result.id] = result
            fresh.append(result)
        return fresh

    async def follow(self) -> AsyncIterator[Result]:
        while True:
            for result in await self.poll():
                yield result

    async def collect(self, ids: Iterable[str], timeout: float) -> dict[str, Result]:
        """Wait until every id has a result (or the timeout); returns those seen."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        while not wanted <= self.seen.keys() and time.monotonic() < deadline:
            await self.poll()
        return {i: self.seen[i] for i in wanted if i in self.seen}
