"""Output-length predictors behind one interface.

The classifier asks ``predictor.predict(batch)`` for a batch of validated requests and
feeds actual lengths back through ``predictor.observe(...)`` (online learning; a no-op
for the fixed predictors here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class PredictionInput:
    prompt: str | None  # the prompt text when the request had one
    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    metadata: Mapping[str, str] = field(default_factory=dict)


class LengthPredictor(Protocol):
    name: str

    def predict(self, batch: Sequence[PredictionInput]) -> list[int]:
        """Predicted output tokens for each input, each in [1, its max_tokens]."""
        ...

    def observe(self, batch: Sequence[tuple[PredictionInput, int]]) -> None:
        """Learn from actual completion token counts."""
        ...


class MaxTokensPredictor:
    """Predicts max_tokens: what a system without a predictor must assume."""

    name = "max_tokens"

    def predict(self, batch: Sequence[PredictionInput]) -> list[int]:
        return [item.max_tokens for item in batch]

    def observe(self, batch: Sequence[tuple[PredictionInput, int]]) -> None:
        return None


class OraclePredictor:
    """Reads ``metadata.length_hint`` (benchmarks know the true length); else max_tokens."""

    name = "oracle"
    HINT_KEY = "length_hint"

    def predict(self, batch: Sequence[PredictionInput]) -> list[int]:
        return [self._one(item) for item in batch]

    def _one(self, item: PredictionInput) -> int:
        hint = item.metadata.get(self.HINT_KEY)
        if hint is None or not hint.strip().isdigit():
            return item.max_tokens
        return max(1, min(int(hint), item.max_tokens))

    def observe(self, batch: Sequence[tuple[PredictionInput, int]]) -> None:
        return None
