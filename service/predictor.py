"""Output-length predictors behind one interface.

The classifier asks ``predictor.predict(batch)`` for a batch of validated requests and
feeds actual lengths back through ``predictor.observe(...)`` (online learning; a no-op
for the fixed predictors here).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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


DEFAULT_ARTIFACT = Path(__file__).resolve().parent / "artifacts" / "length-model.npz"
PREDICTOR_NAMES = ("learned", "max_tokens", "oracle")


def make_predictor(
    name: str = "learned",
    *,
    artifact: Path | None = None,
    snapshot_path: Path | None = None,
    learning_rate: float | None = None,
    decode: Callable[[Sequence[int]], str] | None = None,
) -> LengthPredictor:
    """The predictor registry: ``learned`` (default), ``max_tokens``, ``oracle``.

    ``learned`` starts from ``snapshot_path`` when that file exists (what it learned online
    before a restart), else from ``artifact`` (default: the committed trained model), and
    writes its snapshots to ``snapshot_path``. ``decode`` turns prompt token ids back into
    text for requests that carry no prompt text.
    """
    if name == "max_tokens":
        return MaxTokensPredictor()
    if name == "oracle":
        return OraclePredictor()
    if name != "learned":
        raise ValueError(f"unknown predictor {name!r}; choose one of {', '.join(PREDICTOR_NAMES)}")
    from binbaton.service.learned import LearnedPredictor, LengthModel

    if snapshot_path is not None and Path(snapshot_path).exists():
        model = LengthModel.load(Path(snapshot_path))
    else:
        model = LengthModel.load(Path(artifact) if artifact is not None else DEFAULT_ARTIFACT)
    options = {} if learning_rate is None else {"learning_rate": learning_rate}
    return LearnedPredictor(model, snapshot_path=snapshot_path, decode=decode, **options)


def load_default_predictor(snapshot_path: Path | None = None) -> LengthPredictor:
    """The classifier's default: the learned model (its snapshot if one was saved)."""
    return make_predictor("learned", snapshot_path=snapshot_path)
