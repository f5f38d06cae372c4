"""Topic admin: create requests, bin.0 … bin.{k-1}, results, dlq and traces, idempotently."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from binbaton.schemas.settings import ConfigError, positive_int, setting
from binbaton.schemas.topics import TopicNames


class TopicError(RuntimeError):
    """A topic could not be created, or exists with fewer partitions than asked for."""


@dataclass(frozen=True)
class TopicsConfig(TopicNames):
    """The service's topics: their names, how many bins, and the partitions of each."""

    num_bins: int = field(default=3, metadata=setting(
        "number of length bins k (topics bin.0 … bin.{k-1})", flag="bins", parse=positive_int))
    partitions: int = field(default=2, metadata=setting(
        "partitions of the requests, bin and results topics", parse=positive_int))
    requests_partitions: int = 0  # 0: `partitions`
    bin_partitions: int = 0
    results_partitions: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_bins", "partitions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("requests_partitions", "bin_partitions", "results_partitions"):
            if getattr(self, name) == 0:
                object.__setattr__(self, name, self.partitions)
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    def bin(self, index: int) -> str:
        if not 0 <= index < self.num_bins:
            raise ConfigError(f"bin {index} out of range 0..{self.num_bins - 1}")
        return super().bin(index)

    @property
    def bins(self) -> tuple[str, ...]:
        return tuple(self.bin(i) for i in range(self.num_bins))


def topic_plan(topics: TopicsConfig) -> dict[str, int]:
    """Every topic the service uses -> its partition count."""
    plan = {topics.requests: topics.requests_partitions}
    for name in topics.bins:
        plan[name] = topics.bin_partitions
    plan[topics.results] = topics.results_partitions
    plan[topics.dlq] = 1
    plan[topics.traces] = 1
    return plan


async def existing_partitions(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Partition counts of the named topics that exist (missing ones are left out).

    Asks for all topics: a Metadata request naming a topic auto-creates it on the broker
    (with the broker's default partition count).
    """
    wanted = set(names)
    found: dict[str, int] = {}
    for topic in await admin.describe_topics(None):
        if topic["topic"] in wanted and topic["error_code"] == 0 and topic["partitions"]:
            found[topic["topic"]] = len(topic["partitions"])
    return found


async def ensure_topics(
    bootstrap_servers: str,
    plan: Mapping[str, int],
    timeout: float = 15.0,
    client_id: str = "binbaton-admin",
    strict: bool = True,
) -> dict[str, int]:
    """Create the topics of ``plan`` (name -> partitions) that do not exist yet.

    Idempotent: existing topics are kept. Returns name -> partitions of every planned
    topic once the broker's metadata shows all of them. Raises TopicError if one cannot
    be created or (``strict``) exists with fewer partitions than planned.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id=client_id)
    await admin.start()
    try:
        names = list(plan)
        missing = [n for n in names if n not in await existing_partitions(admin, names)]
        if missing:
            new = [NewTopic(n, num_partitions=plan[n], replication_factor=1) for n in missing]
            response = await admin.create_topics(new, timeout_ms=int(timeout * 1000))
            for entry in response.topic_errors:
                topic, code = entry[0], entry[1]
                error = for_code(code)
                if code != 0 and error is not TopicAlreadyExistsError:
                    raise TopicError(f"could not create topic {topic}: {error.__name__}")
        return await _wait_visible(admin, plan, timeout, strict)
    finally:
        await admin.close()


async def _wait_visible(
    admin: AIOKafkaAdminClient, plan: Mapping[str, int], timeout: float, strict: bool
) -> dict[str, int]:
    names = list(plan)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await existing_partitions(admin, names)
        if len(found) == len(names):
            short = {n: found[n] for n in names if strict and found[n] < plan[n]}
            if short:
                raise TopicError(f"topics exist with fewer partitions than planned: {short}")
            return {n: found[n] for n in names}
        if asyncio.get_running_loop().time() > deadline:
            missing = sorted(set(names) - set(found))
            raise TopicError(f"topics not visible after {timeout}s: {missing}")
        await asyncio.sleep(0.1)


async def create_service_topics(bootstrap_servers: str, topics: TopicsConfig) -> dict[str, int]:
    """Create every topic the service uses (idempotent)."""
    return await ensure_topics(bootstrap_servers, topic_plan(topics))
