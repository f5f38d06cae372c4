"""Bin boundaries: which of k bins a predicted output length falls into."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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
