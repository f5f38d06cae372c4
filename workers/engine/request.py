"""What goes into the engine and what comes out of it (no Kafka, no msgspec here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "error"]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # (0, 1]
    top_k: int = 0  # 0 = off
    seed: int | None = None  # same seed -> same tokens, whatever the batch mates
    stop: tuple[str, ...] = ()  # stop strings, excluded from the output text
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@dataclass(frozen=True)
class GenerationRequest:
    id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    bin: int = 0  # Multi-Bin bin chosen by the classifier (multibin policies group by it)
    predicted_tokens: int | None = None  # predicted output length, if any


@dataclass(frozen=True)
class EngineError:
    code: str  # e.g. "too_long", "kv_budget", "internal"
    message: str


@dataclass(frozen=True)
class GenerationOutput:
    id: str
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    error: EngineError | None = None
    bin: int = 0
    # Unix times in seconds (time.time()); None when the stage never happened.
    admitted_at: float | None = None  # the scheduler took it: its prefill starts
    first_token_at: float | None = None
    finished_at: float = 0.0
    prefill_finished_at: float | None = None  # its own prefill forward pass ended
    # Its K/V joined the running batch: the first decode step it took part in (insertion
    # policies only; None for static batches, and for requests done on their first token).
    inserted_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
