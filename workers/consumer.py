"""BinConsumer: one bin's consumer group seen from a worker: rebalance callbacks, pause and
resume, and at-least-once commits of the offsets whose results were acknowledged.

Completions are out of order, so the OffsetTracker commits per partition up to the lowest
offset whose result is not yet acknowledged (periodically, on revoke and at shutdown). A
rebalance forgets pauses, so a full worker pauses again what it is assigned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from binbaton.service.telemetry.metrics import Metrics, update_consumer_lag
from binbaton.workers.offsets import OffsetTracker

log = logging.getLogger(__name__)

GAUGE_INTERVAL_S = 1.0  # consumer lag and batch occupancy refresh


class FlowControl(Protocol):
    """What a BinConsumer asks of its worker."""

    def is_full(self) -> bool: ...

    async def revoke(self, partitions: set[TopicPartition]) -> None: ...

    def assigned(self, bin: int, partitions: set[TopicPartition]) -> None: ...


class BinConsumer(ConsumerRebalanceListener):
    """The consumer of one bin's group, its offset tracker, and its rebalance callbacks."""

    def __init__(self, worker: FlowControl, bin: int, consumer: AIOKafkaConsumer) -> None:
        self.worker = worker
        self.bin = bin
        self.consumer = consumer
        self.tracker = OffsetTracker()
        self.joined = asyncio.Event()
        self.pauses = 0  # times this consumer paused its partitions because the worker was full
        self.repauses = 0  # ... of which right after a rebalance assigned partitions
        self._commit_lock = asyncio.Lock()
        self._last_commit = time.monotonic()
        self._gauges_updated = 0.0
        self.depth = 0  # records of this bin taken and not yet finished (queue depth)

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Drop what is not yet publishing, commit what is acknowledged, then forget: the
        # new owner starts from there and is the only one to answer the rest.
        if revoked:
            await self.worker.revoke(revoked)
        await self.commit(revoked)
        self.tracker.reset(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.worker.assigned(self.bin, assigned)
        # A rebalance forgets pauses: re-pause when the worker is still full.
        if self.worker.is_full() and assigned:
            self.consumer.pause(*assigned)
            self.pauses += 1
            self.repauses += 1
        self.joined.set()
        log.info("bin %d: assigned %s", self.bin, sorted(assigned))

    def pause_all(self) -> None:
        unpaused = self.consumer.assignment() - self.consumer.paused()
        if unpaused:
            self.consumer.pause(*unpaused)
            self.pauses += 1

    def resume_all(self) -> None:
        paused = self.consumer.paused()
        if paused:
            self.consumer.resume(*paused)

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit, per partition, up to the lowest offset not yet acknowledged."""
        async with self._commit_lock:
            self._last_commit = time.monotonic()
            offsets = self.tracker.committable(partitions)
            if not offsets:
                return
            try:
                await self.consumer.commit(offsets)
            except KafkaError as exc:  # rebalanced away, broker gone: redelivered later
                log.warning("bin %d: commit of %s failed: %r", self.bin, offsets, exc)
                return
            self.tracker.committed(offsets)
            log.debug("bin %d: committed %s", self.bin, offsets)

    async def maybe_commit(self, interval_s: float) -> None:
        if time.monotonic() - self._last_commit >= interval_s:
            await self.commit()

    async def maybe_update_lag(self, metrics: Metrics | None) -> bool:
        """Refresh this consumer's lag gauges every GAUGE_INTERVAL_S; True if it did."""
        if metrics is None or time.monotonic() - self._gauges_updated < GAUGE_INTERVAL_S:
            return False
        self._gauges_updated = time.monotonic()
        with contextlib.suppress(KafkaError, AssertionError):  # rebalancing: next time
            await update_consumer_lag(metrics, self.consumer)
        return True
