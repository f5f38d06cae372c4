"""Predicted output lengths and bins for the benchmark's requests.

``oracle`` rows bin on the true (forced) length. Predictor rows ask a
``binbaton.service.predictor.LengthPredictor`` chosen by name, given what a client would
send (prompt token ids and a ``max_tokens`` cap, no hint of the true length).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from binbaton.bench.workload import BenchRequest
from binbaton.service import predictor as predictor_module
from binbaton.service.bins import BinBoundaries
from binbaton.service.predictor import (
    LengthPredictor,
    MaxTokensPredictor,
    OraclePredictor,
    PredictionInput,
)

ORACLE = "oracle"
PREDICTOR_NAMES = ("oracle", "max_tokens", "learned", "module:attribute")


def make_predictor(name: str, path: Path | None = None) -> LengthPredictor:
    """The service's predictor registry by name ('learned' reads ``path`` or the shipped
    artifact), or 'module:attr' for any other LengthPredictor factory."""
    if ":" not in name:
        registry = getattr(predictor_module, "make_predictor", None)
        if registry is not None:
            return registry(name, artifact=path)
    if name == "oracle":
        return OraclePredictor()
    if name == "max_tokens":
        return MaxTokensPredictor()
    if ":" in name:
        module, _, attr = name.partition(":")
        factory = getattr(importlib.import_module(module), attr)
        return factory() if isinstance(factory, type) or callable(factory) else factory
    raise ValueError(f"unknown predictor {name!r}; choose one of {PREDICTOR_NAMES}")


def predict_lengths(
    requests: Sequence[BenchRequest], predictor: LengthPredictor | None, max_tokens: int
) -> list[int]:
    """Predicted output tokens per request; ``None`` predictor means the oracle."""
    if predictor is None:
        return [r.output_tokens for r in requests]
    inputs = [
        PredictionInput(prompt=r.prompt, prompt_token_ids=r.prompt_token_ids, max_tokens=max_tokens)
        for r in requests
    ]
    predicted = predictor.predict(inputs)
    if len(predicted) != len(requests):
        raise ValueError(f"predictor returned {len(predicted)} lengths for {len(requests)}")
    return [max(1, min(int(p), max_tokens)) for p in predicted]


def assign_bins(predicted: Sequence[int], bins: int) -> list[int]:
    """Equal-mass bins over the predicted lengths of this workload."""
    boundaries = BinBoundaries.equal_mass(predicted, bins)
    return [boundaries.bin_of(p) for p in predicted]
