"""Training and scoring the learned length predictor (``binbaton train-predictor`` runs it).

Lengths are counted in tokens of the served model's tokenizer. The scores are the ones the
README reports: MAE in tokens and Spearman's rank correlation (bin accuracy is computed
where the bins are, by the command).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from binbaton.service.predictor.features import FeatureConfig, Featurizer
from binbaton.service.predictor.learned import LengthModel, featurize_in_chunks, fit_ridge

LengthCounter = Callable[[Sequence[str]], np.ndarray]


def length_counter(tokenizer_dir: Path) -> LengthCounter:
    """texts -> lengths in tokens of the served model's tokenizer (no special tokens)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    def count(texts: Sequence[str]) -> np.ndarray:
        encoded = tokenizer(list(texts), add_special_tokens=False).input_ids
        return np.array([len(ids) for ids in encoded], dtype=np.int64)

    return count


def fit_length_model(prompts: Sequence[str], lengths: np.ndarray, l2: float = 1.0,
                     iterations: int = 150) -> LengthModel:
    """Ridge regression of log(1 + length) on the prompts' hashed features."""
    config = FeatureConfig()
    features = featurize_in_chunks(Featurizer(config), list(prompts))
    return fit_ridge(features, np.log1p(lengths), config, l2=l2, iterations=iterations)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their mean rank (as Spearman needs)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    _, groups, sizes = np.unique(values, return_inverse=True, return_counts=True)
    result: np.ndarray = (np.bincount(groups, weights=ranks) / sizes)[groups]
    return result


def spearman(predicted: np.ndarray, actual: np.ndarray) -> float | None:
    """Rank correlation; None when either side is constant (e.g. the max_tokens baseline)."""
    if np.all(predicted == predicted[0]) or np.all(actual == actual[0]):
        return None
    return float(np.corrcoef(average_ranks(predicted), average_ranks(actual))[0, 1])
