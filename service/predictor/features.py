"""Prompt features for length prediction: hashed character and word n-grams, prompt length.

Everything is computed for a whole batch at once with numpy (no Python loop over n-grams), so
the classifier can featurize thousands of prompts per second. Texts are lower-cased and
UTF-8 encoded; hashes are polynomial hashes in wrapping uint64 arithmetic, stable across
processes (unlike Python's ``hash``), so a trained model keeps its meaning when reloaded.

A batch of n texts becomes:
- a sparse part, one entry per n-gram occurrence: ``rows[e]`` (which text), ``cols[e]`` (hash
  bucket in [0, num_buckets)), ``values[e]`` (1/sqrt(occurrences in that text), so each
  text's sparse vector has unit L2 norm when buckets do not collide);
- a dense part ``[n, NUM_DENSE]``: bias, log prompt length in bytes and words, and a one-hot
  of log2(words) (lets a linear model bend with prompt length).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_MASK64 = (1 << 64) - 1
_BASE = 0x100000001B3  # odd, so it has an inverse modulo 2**64
_BASE_INV = pow(_BASE, -1, 1 << 64)
_MIX = np.uint64(0x9E3779B97F4A7C15)
_SEPARATOR = 0  # byte that joins texts in one buffer (removed from the texts first)
LENGTH_BUCKETS = 12
NUM_DENSE = 3 + LENGTH_BUCKETS


@dataclass(frozen=True)
class FeatureConfig:
    num_buckets: int = 1 << 17
    char_ngrams: tuple[int, ...] = (3, 5)
    word_ngrams: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        if self.num_buckets < 1 or self.num_buckets & (self.num_buckets - 1):
            raise ValueError(f"num_buckets must be a power of two, got {self.num_buckets}")
        if any(n < 1 or n > 8 for n in self.char_ngrams):
            raise ValueError(f"char n-gram sizes must be in 1..8, got {self.char_ngrams}")
        if any(n not in (1, 2) for n in self.word_ngrams):
            raise ValueError(f"word n-gram sizes must be 1 or 2, got {self.word_ngrams}")


@dataclass(frozen=True)
class FeatureBatch:
    num_rows: int
    rows: np.ndarray  # [E] int64, text index of each n-gram occurrence
    cols: np.ndarray  # [E] int64, hash bucket
    values: np.ndarray  # [E] float32
    dense: np.ndarray  # [num_rows, NUM_DENSE] float32


def _mix(h: np.ndarray) -> np.ndarray:
    """Scramble the bits of uint64 hashes (xor-shift-multiply, as in splitmix64)."""
    h = h ^ (h >> np.uint64(31))
    h = h * _MIX
    return h ^ (h >> np.uint64(29))


def _powers(base: int, count: int) -> np.ndarray:
    """[count] uint64: base**0, base**1, … modulo 2**64."""
    powers = np.full(count, base & _MASK64, dtype=np.uint64)
    powers[0] = 1
    return np.cumprod(powers, dtype=np.uint64)


class Featurizer:
    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config or FeatureConfig()
        self._powers = _powers(_BASE, 1 << 16)
        self._inverse_powers = _powers(_BASE_INV, 1 << 16)

    def __call__(self, texts: Sequence[str]) -> FeatureBatch:
        data, doc = self._encode(texts)
        n = len(texts)
        is_word_byte = self._word_bytes(data)
        char_rows, char_hashes = self._char_ngrams(data, doc)
        word_rows, word_hashes, words_per_text = self._word_ngrams(data, doc, is_word_byte, n)
        rows = np.concatenate([char_rows, word_rows])
        hashes = np.concatenate([char_hashes, word_hashes])
        counts = np.bincount(rows, minlength=n)
        values = (1.0 / np.sqrt(np.maximum(counts, 1)))[rows].astype(np.float32)
        cols = (hashes & np.uint64(self.config.num_buckets - 1)).astype(np.int64)
        bytes_per_text = np.bincount(doc, minlength=n + 1)[:n] - 1  # minus the separator
        dense = self._dense(bytes_per_text, words_per_text)
        return FeatureBatch(n, rows, cols, values, dense)

    def _encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Joined UTF-8 bytes, each text preceded by a separator; doc index of every byte."""
        joined = "".join("\0" + text.replace("\0", " ").lower() for text in texts)
        data = np.frombuffer(joined.encode("utf-8"), dtype=np.uint8)
        doc = np.cumsum(data == _SEPARATOR) - 1  # [L] which text each byte belongs to
        self._ensure_powers(len(data) + 1)
        return data, doc

    def _ensure_powers(self, length: int) -> None:
        if length > len(self._powers):
            size = 1 << (length - 1).bit_length()
            self._powers = _powers(_BASE, size)
            self._inverse_powers = _powers(_BASE_INV, size)

    @staticmethod
    def _word_bytes(data: np.ndarray) -> np.ndarray:
        """Letters, digits and any non-ASCII byte make words; everything else separates."""
        return (
            ((data >= ord("a")) & (data <= ord("z")))
            | ((data >= ord("0")) & (data <= ord("9")))
            | (data >= 128)
        )

    def _char_ngrams(self, data: np.ndarray, doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, hashes = [], []
        values = data.astype(np.uint64)
        for n in self.config.char_ngrams:
            count = len(data) - n + 1
            if count <= 0:
                continue
            h = np.full(count, n, dtype=np.uint64)  # seeded by n: sizes do not collide
            for k in range(n):
                h = h * np.uint64(_BASE) + values[k : k + count]
            # inside one text: no separator at the start, same text at the end
            inside = (data[:count] != _SEPARATOR) & (doc[:count] == doc[n - 1 :])
            rows.append(doc[:count][inside])
            hashes.append(_mix(h[inside]))
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.uint64)
        return np.concatenate(rows), np.concatenate(hashes)

    def _word_ngrams(
        self, data: np.ndarray, doc: np.ndarray, is_word: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # word spans [start, end) from the edges of the is_word mask
        edges = np.diff(np.concatenate([[False], is_word, [False]]).astype(np.int8))
        starts = np.flatnonzero(edges == 1)
        ends = np.flatnonzero(edges == -1)
        # polynomial hash of each span from prefix sums: sum_i data[i] * BASE**(i - start)
        weighted = data.astype(np.uint64) * self._powers[: len(data)]
        prefix = np.concatenate([np.zeros(1, np.uint64), np.cumsum(weighted, dtype=np.uint64)])
        unigram = (prefix[ends] - prefix[starts]) * self._inverse_powers[starts]
        unigram = _mix(unigram + np.uint64(0x51))  # [W]
        word_doc = doc[starts] if len(starts) else np.zeros(0, np.int64)
        words_per_text = np.bincount(word_doc, minlength=n)
        rows, hashes = [], []
        if 1 in self.config.word_ngrams:
            rows.append(word_doc)
            hashes.append(unigram)
        if 2 in self.config.word_ngrams and len(unigram) > 1:
            same_text = word_doc[:-1] == word_doc[1:]
            bigram = _mix(unigram[:-1] * np.uint64(_BASE) + unigram[1:] + np.uint64(0x52))
            rows.append(word_doc[:-1][same_text])
            hashes.append(bigram[same_text])
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.uint64), words_per_text
        return np.concatenate(rows), np.concatenate(hashes), words_per_text

    @staticmethod
    def _dense(bytes_per_text: np.ndarray, words_per_text: np.ndarray) -> np.ndarray:
        n = len(bytes_per_text)
        dense = np.zeros((n, NUM_DENSE), dtype=np.float32)
        dense[:, 0] = 1.0
        dense[:, 1] = np.log1p(bytes_per_text) / 8.0
        dense[:, 2] = np.log1p(words_per_text) / 6.0
        bucket = np.minimum(np.log2(words_per_text + 1).astype(np.int64), LENGTH_BUCKETS - 1)
        dense[np.arange(n), 3 + bucket] = 1.0
        return dense
