"""The predictor registry: a predictor by name, and where the trained model is kept."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from binbaton.service.predictor.baselines import MaxTokensPredictor, OraclePredictor
from binbaton.service.predictor.interface import LengthPredictor
from binbaton.service.predictor.learned import DEFAULT_LEARNING_RATE, LearnedPredictor, LengthModel

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # service/artifacts/
DEFAULT_ARTIFACT = ARTIFACTS / "length-model.npz"
PREDICTOR_NAMES = ("learned", "max_tokens", "oracle")


def make_predictor(
    name: str = "learned",
    *,
    artifact: Path | None = None,
    snapshot_path: Path | None = None,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    decode: Callable[[Sequence[int]], str] | None = None,
) -> LengthPredictor:
    """``learned`` (default), ``max_tokens`` or ``oracle``.

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
    return load_learned(artifact, snapshot_path, learning_rate, decode)


def load_learned(
    artifact: Path | None = None,
    snapshot_path: Path | None = None,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    decode: Callable[[Sequence[int]], str] | None = None,
) -> LearnedPredictor:
    """The learned predictor: from its snapshot when one was saved, else the trained model."""
    if snapshot_path is not None and Path(snapshot_path).exists():
        model = LengthModel.load(Path(snapshot_path))
    else:
        model = LengthModel.load(Path(artifact) if artifact is not None else DEFAULT_ARTIFACT)
    return LearnedPredictor(model, learning_rate=learning_rate, snapshot_path=snapshot_path,
                            decode=decode)


def load_default_predictor(snapshot_path: Path | None = None) -> LearnedPredictor:
    """The classifier's default: the learned model (its snapshot if one was saved)."""
    return load_learned(snapshot_path=snapshot_path)
