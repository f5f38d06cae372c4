"""Bin boundaries: which of k bins a predicted output length falls into."""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

BINNERS = ("fixed", "adaptive")  # FixedBinner, AdaptiveBinner


@dataclass(frozen=True)
class BinBoundaries:
    """k bins split by k-1 increasing upper edges: bin i holds lengths <= edges[i]."""

    edges: tuple[int, ...]

    def __post_init__(self) -> None:
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"bin edges must be strictly increasing, got {self.edges}")

    @property
    def num_bins(self) -> int:
        return len(self.edges) + 1

    def bin_of(self, predicted_tokens: int) -> int:
        return bisect.bisect_left(self.edges, predicted_tokens)

    @classmethod
    def equal_mass(cls, lengths: Sequence[int], num_bins: int) -> BinBoundaries:
        """Edges at the 1/k, 2/k, … quantiles of the given lengths (equal probability mass)."""
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        if num_bins == 1:
            return cls(())
        if len(lengths) == 0:
            raise ValueError("equal-mass bins need at least one length")
        qs = np.quantile(np.asarray(lengths, dtype=np.float64), np.arange(1, num_bins) / num_bins)
        edges: list[int] = []
        for q in qs:
            edge = int(np.floor(q))
            edges.append(edge if not edges or edge > edges[-1] else edges[-1] + 1)
        return cls(tuple(edges))

    @classmethod
    def parse(cls, text: str) -> BinBoundaries:
        """'64,128,512' -> edges (64, 128, 512), i.e. 4 bins."""
        text = text.strip()
        if not text:
            return cls(())
        try:
            return cls(tuple(int(part) for part in text.split(",")))
        except ValueError as exc:
            raise ValueError(f"bin edges must be comma-separated integers, got {text!r}") from exc


class FixedBinner:
    """Assigns bins from fixed boundaries (the Binner interface the classifier uses).

    A Binner has ``num_bins``, ``boundaries`` (current edges) and ``assign(predicted)``,
    which may also record the prediction (adaptive binners move their edges with it).
    """

    def __init__(self, boundaries: BinBoundaries) -> None:
        self.boundaries = boundaries

    @property
    def num_bins(self) -> int:
        return self.boundaries.num_bins

    def assign(self, predicted_tokens: int) -> int:
        return self.boundaries.bin_of(predicted_tokens)

    def assign_batch(self, predicted_tokens: Sequence[int]) -> list[int]:
        return assign_all(self.boundaries, predicted_tokens)


def assign_all(boundaries: BinBoundaries, predicted_tokens: Sequence[int]) -> list[int]:
    """bin_of for many predictions at once (same rule: bin i holds lengths <= edges[i])."""
    edges = np.asarray(boundaries.edges, dtype=np.int64)
    return np.searchsorted(edges, np.asarray(predicted_tokens), side="left").tolist()


@dataclass(frozen=True)
class AdaptiveBinnerConfig:
    window: int = 4096  # recent predictions the quantiles are taken over
    min_new_observations: int = 512  # predictions between two reconsiderations
    relative_threshold: float = 0.2  # move only if some edge shifts by more than this fraction

    def __post_init__(self) -> None:
        if self.window < 1 or self.min_new_observations < 1:
            raise ValueError("window and min_new_observations must be >= 1")
        if self.min_new_observations > self.window:
            raise ValueError("min_new_observations must not exceed the window")
        if self.relative_threshold < 0:
            raise ValueError("relative_threshold must be >= 0")


class AdaptiveBinner:
    """Equal-mass bins over a sliding window of recent predictions, with hysteresis.

    Every ``min_new_observations`` predictions it recomputes the quantile edges of the window
    and adopts them only if some edge moved by more than ``relative_threshold`` of its old
    value, so the boundaries follow a shifting workload without flapping on noise. Starts
    from ``initial`` (the configured edges, or those the predictor was trained with).
    """

    def __init__(self, initial: BinBoundaries, config: AdaptiveBinnerConfig | None = None) -> None:
        self.config = config or AdaptiveBinnerConfig()
        self.boundaries = initial
        self.updates = 0  # how many times the edges moved
        self._recent: deque[int] = deque(maxlen=self.config.window)
        self._since_check = 0

    @property
    def num_bins(self) -> int:
        return self.boundaries.num_bins

    def assign(self, predicted_tokens: int) -> int:
        bin_index = self.boundaries.bin_of(predicted_tokens)
        self._record([predicted_tokens])
        return bin_index

    def assign_batch(self, predicted_tokens: Sequence[int]) -> list[int]:
        """A batch is assigned with the current edges; they can move only between batches."""
        bins = assign_all(self.boundaries, predicted_tokens)
        self._record(predicted_tokens)
        return bins

    def _record(self, predicted_tokens: Sequence[int]) -> None:
        self._recent.extend(predicted_tokens)
        self._since_check += len(predicted_tokens)
        if self._since_check >= self.config.min_new_observations:
            self._since_check = 0
            self._reconsider()

    def _reconsider(self) -> None:
        if self.num_bins == 1:
            return
        candidate = BinBoundaries.equal_mass(list(self._recent), self.num_bins)
        if edges_shift(self.boundaries, candidate) > self.config.relative_threshold:
            self.boundaries = candidate
            self.updates += 1


Binner: TypeAlias = FixedBinner | AdaptiveBinner


def edges_shift(old: BinBoundaries, new: BinBoundaries) -> float:
    """Largest relative move of any edge: max |new - old| / old."""
    if old.num_bins != new.num_bins:
        raise ValueError("can only compare boundaries with the same number of bins")
    return max(
        (abs(b - a) / max(a, 1) for a, b in zip(old.edges, new.edges, strict=True)), default=0.0
    )


@dataclass(frozen=True)
class BinSettings:
    reserved_len: int  # output tokens reserved per sequence in this bin
    max_batch: int  # sequences that fit the KV budget at prompt allowance + reserved_len


def bin_settings(
    boundaries: BinBoundaries,
    max_model_len: int,
    kv_budget_tokens: int,
    max_tokens_limit: int,
    *,
    prompt_allowance: int = 256,
    max_batch_cap: int = 256,
) -> list[BinSettings]:
    """Per-bin worker settings: reserve each bin's upper edge, batch as many as the KV fits.

    Bin i reserves min(edges[i], limit) output tokens, the last bin the limit itself, where
    limit = min(max_tokens_limit, max_model_len - prompt_allowance); a sequence then holds
    prompt_allowance + reserved_len KV slots, and max_batch = kv_budget_tokens // that,
    capped at max_batch_cap.
    """
    if min(max_model_len, kv_budget_tokens, max_tokens_limit, max_batch_cap) < 1:
        raise ValueError("max_model_len, kv_budget_tokens, max_tokens_limit, max_batch_cap >= 1")
    if not 0 <= prompt_allowance < max_model_len:
        raise ValueError(
            f"prompt_allowance must be in [0, {max_model_len}), got {prompt_allowance}"
        )
    limit = min(max_tokens_limit, max_model_len - prompt_allowance)
    uppers = [*boundaries.edges, limit]
    settings = []
    for upper in uppers:
        reserved = max(1, min(upper, limit))
        per_sequence = prompt_allowance + reserved
        if kv_budget_tokens < per_sequence:
            raise ValueError(
                f"kv_budget_tokens={kv_budget_tokens} cannot hold one sequence of "
                f"{per_sequence} tokens (prompt allowance {prompt_allowance} + {reserved})"
            )
        settings.append(BinSettings(reserved, min(max_batch_cap, kv_budget_tokens // per_sequence)))
    return settings
