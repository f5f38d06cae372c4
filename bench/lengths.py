"""Predicted output lengths and bins for the benchmark's requests.

``oracle`` rows bin on the true (forced) length. Predictor rows ask a
``binbaton.service.predictor.interface.LengthPredictor`` chosen by name, given what a client
would send (prompt token ids and a ``max_tokens`` cap, no hint of the true length).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from binbaton.bench.workload import BenchRequest
from binbaton.service.classifier.bins import BinBoundaries
from binbaton.service.predictor.interface import LengthPredictor, PredictionInput
from binbaton.service.predictor.registry import make_predictor as registry_predictor

ORACLE = "oracle"


def make_predictor(name: str, path: Path | None = None) -> LengthPredictor:
    """The service's predictor registry by name ('learned' reads ``path`` or the shipped
    artifact), or 'module:attr' for any other LengthPredictor factory."""
    if ":" not in name:
        return registry_predictor(name, artifact=path)
    module, _, attr = name.partition(":")
    factory = getattr(importlib.import_module(module), attr)
    predictor: LengthPredictor = factory() if callable(factory) else factory
    return predictor


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
