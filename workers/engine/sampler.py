"""Vectorized next-token sampling: greedy, temperature, top-k, top-p, per-request seeds.

Sampling uses the exponential race: the argmax of p / E with E ~ Exp(1) per vocabulary
entry draws from p. The noise is counter-based: E for entry v of a request's token number
t is a hash of (the request's seed key, t, v) alone, turned into a uniform and then into
-log(uniform). So a seeded request's tokens depend only on its seed and its logits, never
on its batch mates or on when it joined, and the whole batch's noise costs a few
elementwise ops: no generator state, no launch per request. Whether a batch needs more
than an argmax is decided on the host, from the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch
from binbaton.workers.engine.request import SamplingParams

M32 = 0xFFFF_FFFF
COUNTER_SALT = 0x9E37_79B9  # keeps (key 0, token 0) off mix32's fixed point 0
VOCAB_SALT = 0x85EB_CA6B

IntOrTensor = TypeVar("IntOrTensor", int, torch.Tensor)


def mix32(x: IntOrTensor) -> IntOrTensor:
    """A 32-bit integer hash (xorshift-multiply) of values in [0, 2^32).

    Works alike on Python ints and int64 tensors: both multipliers are below 2^31, so the
    int64 products never overflow before the mask.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB_352D) & M32
    x = x ^ (x >> 15)
    x = (x * 0x3184_8BAB) & M32
    return x ^ (x >> 14)


def seed_key(seed: int) -> int:
    """Any integer seed (negative, or past 2^64: reduced modulo 2^64) -> a 32-bit key."""
    seed %= 2**64
    return mix32((seed & M32) ^ mix32(seed >> 32))


def row_values(params: SamplingParams, vocab_size: int) -> tuple[float, int, float, bool]:
    """(temperature, top_k, top_p, greedy) of one row as the sampler takes them: top_k
    clamped to the vocabulary (0 = all of it), temperature 1 where the row is greedy."""
    greedy = params.greedy
    temperature = 1.0 if greedy else params.temperature
    top_k = min(params.top_k, vocab_size) if params.top_k > 0 else vocab_size
    return temperature, top_k, params.top_p, greedy


@dataclass(frozen=True)
class SamplingRows:
    """Each row's sampling parameters, on the device."""

    temperature: torch.Tensor  # [B] float32, > 0
    top_k: torch.Tensor  # [B] int64 in [1, V]
    top_p: torch.Tensor  # [B] float32 in (0, 1]
    key: torch.Tensor  # [B] int64 in [0, 2^32), the request's seed_key
    greedy: torch.Tensor  # [B] bool, rows that take the argmax

    @classmethod
    def of(
        cls, params: list[SamplingParams], keys: list[int], vocab_size: int, device: torch.device
    ) -> SamplingRows:
        """Built from Python lists (the engine keeps these rows in persistent buffers)."""
        temperature, top_k, top_p, greedy = zip(
            *(row_values(p, vocab_size) for p in params), strict=True
        )
        return cls(
            temperature=torch.tensor(temperature, dtype=torch.float32, device=device),
            top_k=torch.tensor(top_k, dtype=torch.int64, device=device),
            top_p=torch.tensor(top_p, dtype=torch.float32, device=device),
            key=torch.tensor(keys, dtype=torch.int64, device=device),
            greedy=torch.tensor(greedy, dtype=torch.bool, device=device),
        )


class Sampler:
    def __init__(self, vocab_size: int, device: torch.device):
        vocab = torch.arange(vocab_size, dtype=torch.int64, device=device)  # [V]
        self.vocab_hash = mix32(vocab ^ VOCAB_SALT)  # [V]
        self.ranks = vocab[None, :]  # [1, V]

    def __call__(
        self,
        logits: torch.Tensor,  # [B, V] float32
        rows: SamplingRows | None,  # None: every row is greedy (known on the host)
        counters: torch.Tensor,  # [B] int, each row's index of the token being sampled
    ) -> torch.Tensor:  # [B] int64, on the device
        tokens = logits.argmax(dim=-1)  # [B]
        if rows is None:
            return tokens
        return torch.where(rows.greedy, tokens, self._sample(logits, rows, counters))

    def _sample(
        self, logits: torch.Tensor, rows: SamplingRows, counters: torch.Tensor
    ) -> torch.Tensor:  # [B]
        sorted_logits, order = (logits / rows.temperature[:, None]).sort(dim=-1, descending=True)
        sorted_logits = sorted_logits.masked_fill(
            self.ranks >= rows.top_k[:, None], float("-inf")
        )
        probs = sorted_logits.softmax(dim=-1)  # [B, V]
        mass_before = probs.cumsum(dim=-1) - probs  # [B, V]; the top token always stays
        probs = probs.masked_fill(mass_before >= rows.top_p[:, None], 0.0)
        noise = self.noise(rows.key, counters).gather(1, order)  # [B, V], by token id
        choice = (probs / noise).argmax(dim=-1)  # [B]
        return order.gather(1, choice[:, None]).squeeze(1)

    def noise(self, keys: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
        """[B] keys, [B] counters -> [B, V] Exp(1) draws, one per vocabulary entry."""
        row = mix32(keys ^ mix32((counters.long() + COUNTER_SALT) & M32))  # [B]
        bits = mix32(row[:, None] ^ self.vocab_hash[None, :])  # [B, V] in [0, 2^32)
        uniform = ((bits >> 8).float() + 0.5) * 2.0**-24  # [B, V] in (0, 1), 24 bits
        return -torch.log(uniform)
