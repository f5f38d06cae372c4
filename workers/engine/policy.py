"""Admission policies: which waiting requests join the running batch, and how much KV
cache each one reserves.

- ``static``: run-to-completion batches of up to ``max_batch`` requests, FIFO; a new batch
  starts only when the previous one has fully finished (the papers' baseline).
- ``multibin-static``: the same, but a batch is formed from one bin at a time (the bin of
  the oldest waiting request, so no bin starves), up to that bin's batch size.
- ``insert``: mid-flight insertion; any free slot is refilled at the next step, FIFO.
- ``multibin-insert``: insertion with a batch-size cap per bin (no bin blocks another).

Reserved length (KV tokens held from admission):
- ``static`` / ``insert``: prompt + max_tokens, so a sequence never outgrows its blocks.
- multi-bin policies: prompt + min(max_tokens, R), where R is ``bin_reserved_tokens[bin]``
  if configured, else the request's ``predicted_tokens``, else max_tokens. A sequence that
  outgrows its reservation takes more blocks as it goes; when none are free the engine
  preempts the youngest running sequence (it is recomputed later, tokens kept).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.sequence import Sequence


@dataclass
class AdmissionBudget:
    """What is left this step: KV blocks and prompt tokens to prefill."""

    free_blocks: int
    block_size: int
    prefill_tokens: int | None  # None: no cap
    taken: int = 0

    def take(self, seq: Sequence) -> bool:
        """Charge ``seq`` if it fits; the first newcomer of a step ignores the token cap."""
        blocks = -(-seq.reserved_len // self.block_size)
        tokens = len(seq.token_ids)
        if blocks > self.free_blocks:
            return False
        if self.prefill_tokens is not None and self.taken and tokens > self.prefill_tokens:
            return False
        self.free_blocks -= blocks
        if self.prefill_tokens is not None:
            self.prefill_tokens -= tokens
        self.taken += 1
        return True


def per_bin(values: tuple[int, ...] | None, bin_: int) -> int | None:
    if values is None:
        return None
    return values[min(bin_, len(values) - 1)]


class Policy:
    """Base: FIFO admission up to max_batch; subclasses restrict it."""

    name = "insert"

    def __init__(self, config: EngineConfig):
        self.config = config

    def reserved_output(self, seq: Sequence) -> int:
        return seq.request.sampling.max_tokens

    def reserve(self, seq: Sequence) -> None:
        """Set ``seq.reserved_len``; a preempted sequence keeps room for what it has."""
        wanted = seq.prompt_len + self.reserved_output(seq)
        seq.reserved_len = max(wanted, len(seq.token_ids) + 1)

    def admit(
        self, waiting: Iterable[Sequence], running: list[Sequence], budget: AdmissionBudget
    ) -> list[Sequence]:
        chosen: list[Sequence] = []
        for seq in self.candidates(waiting, running):
            if len(running) + len(chosen) >= self.config.max_batch:
                break
            if not self.bin_has_room(seq, running, chosen):
                continue
            self.reserve(seq)
            if not budget.take(seq):
                break  # FIFO: nobody overtakes a request that does not fit yet
            chosen.append(seq)
        return chosen

    def candidates(
        self, waiting: Iterable[Sequence], running: list[Sequence]
    ) -> Iterable[Sequence]:
        return waiting

    def bin_has_room(self, seq: Sequence, running: list[Sequence], chosen: list[Sequence]) -> bool:
        return True


class InsertPolicy(Policy):
    name = "insert"


class StaticPolicy(Policy):
    name = "static"

    def candidates(
        self, waiting: Iterable[Sequence], running: list[Sequence]
    ) -> Iterable[Sequence]:
        return () if running else waiting


class MultiBinMixin(Policy):
    def reserved_output(self, seq: Sequence) -> int:
        request = seq.request
        cap = per_bin(self.config.bin_reserved_tokens, request.bin)
        if cap is None:
            cap = request.predicted_tokens
        max_tokens = request.sampling.max_tokens
        return max_tokens if cap is None else max(1, min(max_tokens, cap))

    def bin_has_room(self, seq: Sequence, running: list[Sequence], chosen: list[Sequence]) -> bool:
        cap = per_bin(self.config.bin_max_batch, seq.request.bin)
        if cap is None:
            return True
        same_bin = sum(1 for s in (*running, *chosen) if s.request.bin == seq.request.bin)
        return same_bin < cap


class MultiBinStaticPolicy(MultiBinMixin):
    name = "multibin-static"

    def candidates(
        self, waiting: Iterable[Sequence], running: list[Sequence]
    ) -> Iterable[Sequence]:
        if running:
            return ()
        waiting = list(waiting)
        if not waiting:
            return ()
        bin_ = waiting[0].request.bin  # the oldest request's bin goes next
        return [s for s in waiting if s.request.bin == bin_]


class MultiBinInsertPolicy(MultiBinMixin):
    name = "multibin-insert"


POLICY_CLASSES: dict[str, type[Policy]] = {
    "static": StaticPolicy,
    "multibin-static": MultiBinStaticPolicy,
    "insert": InsertPolicy,
    "multibin-insert": MultiBinInsertPolicy,
}


def make_policy(config: EngineConfig) -> Policy:
    return POLICY_CLASSES[config.policy](config)
