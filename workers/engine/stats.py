"""Per-step and cumulative engine counters (read by metrics and benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepStats:
    """One scheduler iteration."""

    running: int = 0  # sequences in the batch after the step
    waiting: int = 0  # admitted-able requests still queued after the step
    admitted: int = 0
    retired: int = 0  # finished sequences handed out (errors excluded)
    errors: int = 0  # requests rejected with an error output
    preempted: int = 0
    prefill_tokens: int = 0  # prompt tokens run through prefill
    decode_tokens: int = 0  # sequences in the decode step
    generated_tokens: int = 0  # tokens sampled (prefill + decode)
    prefill_s: float = 0.0
    decode_s: float = 0.0
    kv_blocks_used: int = 0


@dataclass
class EngineStats:
    """Cumulative totals since the engine started."""

    steps: int = 0
    admitted: int = 0
    retired: int = 0
    errors: int = 0
    preempted: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    generated_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    def add(self, step: StepStats) -> None:
        self.steps += 1
        self.admitted += step.admitted
        self.retired += step.retired
        self.errors += step.errors
        self.preempted += step.preempted
        self.prefill_tokens += step.prefill_tokens
        self.decode_tokens += step.decode_tokens
        self.generated_tokens += step.generated_tokens
        self.prefill_s += step.prefill_s
        self.decode_s += step.decode_s
