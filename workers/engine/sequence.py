"""A request's life inside the engine: tokens, cache blocks, timings, finish state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from binbaton.workers.engine.request import (
    EngineError,
    FinishReason,
    GenerationOutput,
    GenerationRequest,
)


@dataclass(eq=False)
class Sequence:
    request: GenerationRequest
    token_ids: list[int]  # prompt + generated
    reserved_len: int = 0  # tokens of cache reserved at admission (prompt + reserved output)
    blocks: list[int] = field(default_factory=list)
    sampling_key: int = 0  # the key of its noise stream (see sampler.seed_key)
    row: int | None = None  # its row of the decode batch while it has one (the runner's)
    finish_reason: FinishReason | None = None
    text: str | None = None  # final text when a stop string cut it
    admitted_at: float | None = None
    first_token_at: float | None = None
    prefill_finished_at: float | None = None
    inserted_at: float | None = None
    suspect: bool = False  # ran in a step that raised: it runs alone until cleared
    max_len: int = field(init=False)  # prompt + max_tokens: it ends there ("length")

    def __post_init__(self) -> None:
        self.max_len = self.prompt_len + self.request.sampling.max_tokens

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def generated(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def output(self, text: str) -> GenerationOutput:
        assert self.finish_reason is not None
        return GenerationOutput(
            id=self.id,
            token_ids=tuple(self.generated),
            text=text,
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_len,
            bin=self.request.bin,
            admitted_at=self.admitted_at,
            first_token_at=self.first_token_at,
            finished_at=time.time(),
            prefill_finished_at=self.prefill_finished_at,
            inserted_at=self.inserted_at,
        )


def error_output(request: GenerationRequest, code: str, message: str) -> GenerationOutput:
    return GenerationOutput(
        id=request.id,
        token_ids=(),
        text="",
        finish_reason="error",
        prompt_tokens=len(request.prompt_token_ids),
        error=EngineError(code=code, message=message),
        bin=request.bin,
        finished_at=time.time(),
    )
