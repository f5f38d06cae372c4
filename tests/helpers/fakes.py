"""Stand-ins at the worker's and the classifier's seams: a consumer, a producer, a record,
and a predictor with a bug."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError


class FakeConsumer:
    """The AIOKafkaConsumer calls a BinConsumer makes, recorded."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = set(assigned)
        self.paused_tps: set[TopicPartition] = set()
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.commits: list[dict[TopicPartition, int]] = []
        self.fail_commit = False

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_tps)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_tps.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_tps.difference_update(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.fail_commit:
            raise CommitFailedError("rebalanced")
        self.commits.append(dict(offsets))


@dataclass
class Ack:
    """Where the broker put a message (aiokafka's RecordMetadata, the fields read)."""

    partition: int
    offset: int


class FakeProducer:
    """Acknowledges every send at once; ``sent``: (topic, value, key, headers)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]] | None]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None,
                            headers: list[tuple[str, bytes]] | None = None) -> Ack:
        self.sent.append((topic, value, key, headers))
        return Ack(partition=0, offset=len(self.sent))


def consumer_record(tp: TopicPartition, offset: int, key: str, value: bytes,
                    headers: Sequence[tuple[str, bytes]] = ()) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        topic=tp.topic, partition=tp.partition, offset=offset, timestamp=0, timestamp_type=0,
        key=key.encode(), value=value, checksum=None, serialized_key_size=0,
        serialized_value_size=len(value), headers=tuple(headers),
    )


class ExplodingPredictor:
    """Fails on prompts containing "boom" (a predictor bug, not bad input)."""

    name = "exploding"

    def predict(self, batch: Sequence[Any]) -> list[int]:
        if any(item.prompt and "boom" in item.prompt for item in batch):
            raise RuntimeError("boom")
        return [item.max_tokens for item in batch]

    def observe(self, batch: Sequence[Any]) -> None:
        return None
