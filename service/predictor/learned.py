"""The learned length predictor: a linear model on log(1 + output tokens) over prompt features.

Trained offline by ridge regression (``fit``, conjugate gradients on the normal equations) and
online by SGD steps on the same squared error (``LearnedPredictor.observe``). A model is two
float arrays plus its feature config; it saves to one small ``.npz`` (atomic replace).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from binbaton.service.predictor.features import NUM_DENSE, FeatureBatch, FeatureConfig, Featurizer
from binbaton.service.predictor.interface import PredictionInput

FORMAT_VERSION = 1
DEFAULT_LEARNING_RATE = 0.1  # online step size (normalised LMS: 1 fits each example exactly)


@dataclass
class LengthModel:
    """z = w_sparse · x_sparse + w_dense · x_dense ≈ log(1 + output tokens)."""

    feature_config: FeatureConfig = field(default_factory=FeatureConfig)
    # [num_buckets] and [NUM_DENSE] float32; left empty: zeros of those sizes (untrained)
    sparse_weights: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    dense_weights: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    info: dict[str, Any] = field(default_factory=dict)  # provenance: tokenizer, metrics, …

    def __post_init__(self) -> None:
        buckets = self.feature_config.num_buckets
        if not self.sparse_weights.size:
            self.sparse_weights = np.zeros(buckets, dtype=np.float32)
        if not self.dense_weights.size:
            self.dense_weights = np.zeros(NUM_DENSE, dtype=np.float32)
        if self.sparse_weights.shape != (buckets,) or self.dense_weights.shape != (NUM_DENSE,):
            raise ValueError(
                f"weights have shapes {self.sparse_weights.shape}, {self.dense_weights.shape};"
                f" expected ({buckets},), ({NUM_DENSE},)"
            )

    def predict_log(self, features: FeatureBatch) -> np.ndarray:
        """[n] float64 predicted log(1 + tokens)."""
        sparse = np.bincount(
            features.rows,
            weights=self.sparse_weights[features.cols] * features.values,
            minlength=features.num_rows,
        )
        return sparse + features.dense @ self.dense_weights.astype(np.float64)

    def sgd_step(self, features: FeatureBatch, targets: np.ndarray, learning_rate: float) -> None:
        """One normalised-LMS step on the squared error in log space.

        Each example's error is divided by its squared feature norm (so learning_rate = 1
        would fit a lone example exactly) and the batch is averaged (stable for any size).
        """
        squared_norms = np.bincount(
            features.rows,
            weights=features.values.astype(np.float64) ** 2,
            minlength=features.num_rows,
        ) + np.square(features.dense, dtype=np.float64).sum(axis=1)
        error = (self.predict_log(features) - targets) / squared_norms / features.num_rows  # [n]
        np.add.at(
            self.sparse_weights,
            features.cols,
            (-learning_rate * error[features.rows] * features.values).astype(np.float32),
        )
        self.dense_weights -= (learning_rate * (features.dense.T @ error)).astype(np.float32)

    def save(self, path: Path) -> None:
        """Atomic: written beside ``path`` then renamed over it (readers never see half)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT_VERSION,
            "feature_config": asdict(self.feature_config),
            "info": self.info,
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                np.savez_compressed(
                    out,
                    sparse_weights=self.sparse_weights,
                    dense_weights=self.dense_weights,
                    meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                )
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> LengthModel:
        try:
            with np.load(path) as archive:
                meta = json.loads(archive["meta"].tobytes())
                sparse = archive["sparse_weights"].astype(np.float32)
                dense = archive["dense_weights"].astype(np.float32)
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path} is not a length-model file: {exc}") from exc
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported length-model format {meta.get('format')}")
        config = meta["feature_config"]
        config = FeatureConfig(
            num_buckets=config["num_buckets"],
            char_ngrams=tuple(config["char_ngrams"]),
            word_ngrams=tuple(config["word_ngrams"]),
        )
        return cls(config, sparse, dense, meta.get("info", {}))


def fit_ridge(
    features: FeatureBatch,
    targets: np.ndarray,
    config: FeatureConfig,
    l2: float = 1.0,
    iterations: int = 200,
) -> LengthModel:
    """Minimise ||X w - y||² + l2 ||w||² (bias not penalised) by conjugate gradients."""
    buckets = config.num_buckets
    penalty = np.full(buckets + NUM_DENSE, l2)
    penalty[buckets] = 1e-6  # the bias column

    def normal_matvec(w: np.ndarray) -> np.ndarray:  # (XᵀX + λ) w, w: [buckets + NUM_DENSE]
        return transpose_matvec(forward(w)) + penalty * w

    def forward(w: np.ndarray) -> np.ndarray:  # X w: [n]
        sparse = np.bincount(
            features.rows, weights=w[features.cols] * features.values, minlength=features.num_rows
        )
        return sparse + features.dense @ w[buckets:]

    def transpose_matvec(r: np.ndarray) -> np.ndarray:  # Xᵀ r: [buckets + NUM_DENSE]
        sparse = np.bincount(
            features.cols, weights=r[features.rows] * features.values, minlength=buckets
        )
        return np.concatenate([sparse, features.dense.T @ r])

    w = np.zeros(buckets + NUM_DENSE)
    residual = transpose_matvec(targets) - normal_matvec(w)
    direction = residual.copy()
    norm = residual @ residual
    for _ in range(iterations):
        step = normal_matvec(direction)
        alpha = norm / (direction @ step)
        w += alpha * direction
        residual -= alpha * step
        new_norm = residual @ residual
        if new_norm < 1e-12:
            break
        direction = residual + (new_norm / norm) * direction
        norm = new_norm
    return LengthModel(config, w[:buckets].astype(np.float32), w[buckets:].astype(np.float32))


def concat_features(parts: Sequence[FeatureBatch]) -> FeatureBatch:
    """Stack featurized chunks (rows renumbered)."""
    offsets = np.cumsum([0] + [p.num_rows for p in parts])
    return FeatureBatch(
        num_rows=int(offsets[-1]),
        rows=np.concatenate([p.rows + off for p, off in zip(parts, offsets, strict=False)]),
        cols=np.concatenate([p.cols for p in parts]),
        values=np.concatenate([p.values for p in parts]),
        dense=np.concatenate([p.dense for p in parts]),
    )


def featurize_in_chunks(featurizer: Featurizer, texts: Sequence[str], chunk: int = 2048):
    return concat_features([featurizer(texts[i : i + chunk]) for i in range(0, len(texts), chunk)])


class LearnedPredictor:
    """The LengthPredictor the classifier uses by default (registry name ``learned``).

    ``observe`` takes SGD steps; with ``snapshot_path`` set, the model is written there (atomic)
    every ``snapshot_every`` observations and on ``save_snapshot()``, so a restart keeps it.
    """

    name = "learned"

    def __init__(
        self,
        model: LengthModel,
        *,
        learning_rate: float = DEFAULT_LEARNING_RATE,
        snapshot_path: Path | None = None,
        snapshot_every: int = 1000,
        step_size: int = 8,
        decode: Callable[[Sequence[int]], str] | None = None,
    ) -> None:
        if learning_rate <= 0 or snapshot_every < 1 or step_size < 1:
            raise ValueError("learning_rate, snapshot_every and step_size must be positive")
        self.model = model
        self.featurizer = Featurizer(model.feature_config)
        self.learning_rate = learning_rate
        self.snapshot_path = Path(snapshot_path) if snapshot_path is not None else None
        self.snapshot_every = snapshot_every
        self.step_size = step_size
        self.decode = decode
        self.observed = int(model.info.get("observed", 0))
        self._unsaved = 0
        self._lock = threading.Lock()  # observe() may run beside predict() in another thread

    def text_of(self, item: PredictionInput) -> str:
        if item.prompt is not None:
            return item.prompt
        if self.decode is not None:
            return self.decode(item.prompt_token_ids)
        return " ".join(map(str, item.prompt_token_ids))  # length signal only

    def predict(self, batch: Sequence[PredictionInput]) -> list[int]:
        if not batch:
            return []
        features = self.featurizer([self.text_of(item) for item in batch])
        with self._lock:
            log_lengths = self.model.predict_log(features)
        tokens = np.rint(np.expm1(np.clip(log_lengths, 0.0, 20.0)))
        limits = np.array([item.max_tokens for item in batch], dtype=np.float64)
        return np.clip(tokens, 1, limits).astype(np.int64).tolist()

    def observe(self, batch: Sequence[tuple[PredictionInput, int]]) -> None:
        """SGD steps on mini-batches of ``step_size`` (a large batch is not one tiny step)."""
        batch = [(item, actual) for item, actual in batch if actual >= 0]
        for start in range(0, len(batch), self.step_size):
            self._step(batch[start : start + self.step_size])
        due = self.snapshot_path is not None and self._unsaved >= self.snapshot_every
        if due:
            self.save_snapshot()

    def _step(self, batch: Sequence[tuple[PredictionInput, int]]) -> None:
        features = self.featurizer([self.text_of(item) for item, _ in batch])
        targets = np.log1p(np.array([actual for _, actual in batch], dtype=np.float64))
        with self._lock:
            self.model.sgd_step(features, targets, self.learning_rate)
            self.observed += len(batch)
            self.model.info["observed"] = self.observed
            self._unsaved += len(batch)

    def save_snapshot(self) -> None:
        if self.snapshot_path is None:
            return
        with self._lock:
            self.model.save(self.snapshot_path)
            self._unsaved = 0
