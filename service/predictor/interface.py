"""What every output-length predictor takes and does.

The classifier asks ``predictor.predict(batch)`` for a batch of validated requests and
feeds actual lengths back through ``predictor.observe(...)`` (online learning).
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
