"""The predictors that learn nothing: ``max_tokens`` and ``oracle``."""

from __future__ import annotations

from collections.abc import Sequence

from binbaton.service.predictor.interface import PredictionInput


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
