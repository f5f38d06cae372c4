"""The scheduler: waiting and running queues, admission, growth, preemption, retirement.

``schedule()`` plans one step. First every running sequence gets a block for the token it
is about to feed (when the cache is full the youngest running sequence is preempted: its
blocks go back and it waits at the front, to be recomputed). Then, unless it had to
preempt, the policy admits waiting requests into what is left. Cache blocks go back to the
pool in exactly one place, ``_free``: at retirement, preemption and abort.

After a step that raised (``suspect``), every sequence of that step waits at the front as
a suspect, and suspects run alone, one per step (a *probe*), before anything else is
admitted: a probe that raises again is the culprit; one that passes is cleared and waits
for ordinary admission (recomputed, like a preempted sequence).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.kv_cache import KVCache
from binbaton.workers.engine.policy import AdmissionBudget, make_policy
from binbaton.workers.engine.sequence import Sequence


@dataclass(frozen=True)
class ScheduledBatch:
    """One step's work, as the model runner takes it."""

    prefill: list[Sequence]  # newcomers: prefilled together, then decoded with the rest
    decode: list[Sequence]  # every running sequence, oldest first, newcomers last
    grown: list[Sequence]  # running sequences given a block this step
    freed: list[Sequence]  # out of the batch since the last step (their rows go)
    preempted: int
    prefill_tokens: int  # prompt tokens the newcomers' prefill runs over
    probe: bool = False  # a suspect alone (see ``suspect``)


class Scheduler:
    def __init__(self, config: EngineConfig, cache: KVCache):
        self.config = config
        self.cache = cache
        self.policy = make_policy(config)
        self.waiting: list[Sequence] = []  # FIFO; preempted sequences go back to the front
        self.running: list[Sequence] = []  # admission order (youngest last)
        self._freed: list[Sequence] = []  # freed since the last schedule()

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        probe = next((s for s in self.waiting if s.suspect), None)
        grown: list[Sequence] = []
        preempted = 0
        if probe is not None and not self.running:
            newcomers = self._admit_probe(probe)
        else:
            grown, preempted = self._grow()
            admit = self.waiting and not preempted and probe is None
            newcomers = self._admit() if admit else []
        freed, self._freed = self._freed, []
        return ScheduledBatch(
            prefill=newcomers,
            decode=list(self.running),
            grown=grown,
            freed=freed,
            preempted=preempted,
            prefill_tokens=sum(len(s.token_ids) for s in newcomers),
            probe=bool(newcomers) and newcomers[0].suspect,
        )

    def suspect(self, seqs: list[Sequence]) -> None:
        """``seqs`` (every running sequence) ran in a step that raised: each loses its
        cache and waits at the front, in order, as a suspect."""
        self.running = [s for s in self.running if s not in seqs]
        for seq in reversed(seqs):
            seq.suspect = True
            self._preempt(seq)

    def clear(self, probe: ScheduledBatch) -> None:
        """A probe step passed: its sequence is cleared and, unless it finished, waits
        for ordinary admission (the next suspect runs alone)."""
        for seq in probe.decode:
            seq.suspect = False
            if not seq.finished:
                self.running.remove(seq)
                self._preempt(seq)

    def drop(self, seq: Sequence) -> None:
        """Out of the batch for good (it failed alone); its blocks go back."""
        self.running = [s for s in self.running if s is not seq]
        self.waiting = [s for s in self.waiting if s is not seq]
        self._free(seq)

    def retire(self, finished: list[Sequence]) -> None:
        """Take the finished sequences out of the batch and free them."""
        if finished:
            self.running = [s for s in self.running if not s.finished]
            for seq in finished:
                self._free(seq)

    def abort(self, request_id: str) -> bool:
        """Drop every waiting or running sequence of ``request_id``; False if none.

        A running one's blocks go back at once; its decode row goes at the next step.
        """
        waiting = [s for s in self.waiting if s.id == request_id]
        running = [s for s in self.running if s.id == request_id]
        if waiting:
            self.waiting = [s for s in self.waiting if s.id != request_id]
        if running:
            self.running = [s for s in self.running if s.id != request_id]
            for seq in running:
                self._free(seq)
        return bool(waiting or running)

    # ---- one step's plan --------------------------------------------------------------

    def _grow(self) -> tuple[list[Sequence], int]:
        """Give each running sequence a block for the token it feeds next, oldest first,
        preempting the youngest when none is free. Returns (grown, preempted count)."""
        allocator, block_size = self.cache.allocator, self.cache.block_size
        grown, preempted = [], 0
        # Only a sequence whose next token starts a block it does not hold needs one.
        short = [s for s in self.running if len(s.token_ids) > len(s.blocks) * block_size]
        for seq in short:
            if not seq.blocks:
                continue  # preempted already, for an older one
            missing = -(-len(seq.token_ids) // block_size) - len(seq.blocks)
            while allocator.num_free < missing and self.running[-1] is not seq:
                self._preempt(self.running.pop())
                preempted += 1
            if allocator.num_free < missing:  # seq is the youngest left: it goes too
                self._preempt(self.running.pop())
                preempted += 1
                break
            seq.blocks += allocator.allocate(missing)
            grown.append(seq)
        return grown, preempted

    def _admit(self) -> list[Sequence]:
        """Newcomers chosen by the policy, each with the blocks of its reservation."""
        budget = AdmissionBudget(
            free_blocks=self.cache.allocator.num_free,
            block_size=self.cache.block_size,
            prefill_tokens=self.config.max_prefill_tokens,
        )
        newcomers = self.policy.admit(self.waiting, self.running, budget)
        if not newcomers:
            return []
        admitted = set(map(id, newcomers))
        self.waiting = [s for s in self.waiting if id(s) not in admitted]
        now = time.time()
        for seq in newcomers:
            seq.blocks = self.cache.allocator.allocate(self.cache.blocks_for(seq.reserved_len))
            if seq.admitted_at is None:
                seq.admitted_at = now
        self.running.extend(newcomers)
        return newcomers

    def _admit_probe(self, seq: Sequence) -> list[Sequence]:
        """``seq`` alone, with the blocks of its reservation (the cache is all free)."""
        self.policy.reserve(seq)
        self.waiting.remove(seq)
        seq.blocks = self.cache.allocator.allocate(self.cache.blocks_for(seq.reserved_len))
        self.running.append(seq)
        return [seq]

    def _preempt(self, seq: Sequence) -> None:
        """``seq`` (already out of ``running``) loses its cache and waits at the front."""
        self._free(seq)
        self.waiting.insert(0, seq)

    def _free(self, seq: Sequence) -> None:
        """The one place cache blocks go back to the pool."""
        self.cache.allocator.release(seq.blocks)
        seq.blocks = []
        self._freed.append(seq)
