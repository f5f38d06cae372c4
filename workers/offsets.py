"""OffsetTracker: what a consumer may commit when messages complete out of order.

A worker takes messages in offset order per partition but finishes them in any order
(short answers overtake long ones). Kafka stores one committed offset per partition,
meaning "everything below this is done", so per partition we may commit only up to the
lowest offset whose result the broker has not acknowledged yet.

Invariant, per partition: every offset below ``committable()[tp]`` that was taken has
been acknowledged. Offsets never taken (gaps: compacted or control records) count as done.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

Partition = Hashable  # aiokafka's TopicPartition in the worker; anything hashable in tests


@dataclass
class _PartitionState:
    pending: set[int] = field(default_factory=set)  # taken, result not yet acknowledged
    next_offset: int = 0  # one past the highest offset taken
    committed: int | None = None  # last offset committed by us, if any

    def position(self) -> int:
        return min(self.pending) if self.pending else self.next_offset


class OffsetTracker:
    def __init__(self) -> None:
        self._partitions: dict[Partition, _PartitionState] = {}

    def track(self, tp: Partition, offset: int) -> None:
        """A message was taken; offsets must increase per partition."""
        state = self._partitions.get(tp)
        if state is None:
            state = self._partitions[tp] = _PartitionState(next_offset=offset)
        if offset < state.next_offset:
            raise ValueError(
                f"offset {offset} of {tp} taken after {state.next_offset - 1}: "
                "offsets must increase per partition (reset() after a seek or revoke)"
            )
        state.pending.add(offset)
        state.next_offset = offset + 1

    def done(self, tp: Partition, offset: int) -> bool:
        """The message's result was acknowledged. False if it is not tracked (revoked)."""
        state = self._partitions.get(tp)
        if state is None or offset not in state.pending:
            return False
        state.pending.remove(offset)
        return True

    def committable(self, partitions: Iterable[Partition] | None = None) -> dict[Partition, int]:
        """``{tp: next offset to consume}`` for partitions that moved since the last commit."""
        wanted = self._partitions if partitions is None else partitions
        offsets = {}
        for tp in wanted:
            state = self._partitions.get(tp)
            if state is None:
                continue
            position = state.position()
            if state.committed is None or position > state.committed:
                offsets[tp] = position
        return offsets

    def committed(self, offsets: dict[Partition, int]) -> None:
        """Record a successful commit of ``offsets`` (as returned by committable())."""
        for tp, offset in offsets.items():
            state = self._partitions.get(tp)
            if state is not None:
                state.committed = offset

    def pending(self, tp: Partition) -> int:
        state = self._partitions.get(tp)
        return len(state.pending) if state else 0

    @property
    def total_pending(self) -> int:
        return sum(len(state.pending) for state in self._partitions.values())

    @property
    def partitions(self) -> set[Partition]:
        return set(self._partitions)

    def reset(self, partitions: Iterable[Partition] | None = None) -> None:
        """Forget partitions (revoked, or all); their late completions are then ignored."""
        if partitions is None:
            self._partitions.clear()
            return
        for tp in partitions:
            self._partitions.pop(tp, None)
