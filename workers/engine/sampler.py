"""Vectorized next-token sampling: greedy, temperature, top-k, top-p, per-request seeds.

Sampling uses the exponential race (argmax of p / E with E ~ Exp(1)), which draws from p.
Each seeded request draws its noise from its own torch.Generator, so its tokens depend
only on its seed and its logits, never on its batch mates.
"""

from __future__ import annotations

import torch
from binbaton.workers.engine.request import SamplingParams


class Sampler:
    def __init__(self, seed: int, device: torch.device):
        self.device = device
        self.generator = torch.Generator(device=device)  # for requests without a seed
        self.generator.manual_seed(seed)

    def __call__(
        self,
        logits: torch.Tensor,  # [B, V] float32
        params: list[SamplingParams],
        generators: list[torch.Generator | None],  # per row; None: the shared one
    ) -> list[int]:
        greedy = torch.tensor([p.greedy for p in params], device=logits.device)  # [B]
        tokens = logits.argmax(dim=-1)  # [B]
        if not bool(greedy.all()):
            sampled = self._sample(logits, params, generators)
            tokens = torch.where(greedy, tokens, sampled)
        return tokens.tolist()

    def _sample(
        self,
        logits: torch.Tensor,  # [B, V]
        params: list[SamplingParams],
        generators: list[torch.Generator | None],
    ) -> torch.Tensor:  # [B]
        batch, vocab = logits.shape
        device = logits.device
        temps = torch.tensor([p.temperature or 1.0 for p in params], device=device)  # [B]
        top_k = torch.tensor([p.top_k or vocab for p in params], device=device)  # [B]
        top_p = torch.tensor([p.top_p for p in params], device=device)  # [B]
        sorted_logits, order = (logits / temps[:, None]).sort(dim=-1, descending=True)
        ranks = torch.arange(vocab, device=device)[None, :]  # [1, V]
        sorted_logits = sorted_logits.masked_fill(ranks >= top_k[:, None], float("-inf"))
        probs = sorted_logits.softmax(dim=-1)  # [B, V]
        mass_before = probs.cumsum(dim=-1) - probs  # [B, V]; the top token always stays
        probs = probs.masked_fill(mass_before >= top_p[:, None], 0.0)
        choice = (probs / self._noise(batch, vocab, generators)).argmax(dim=-1)  # [B]
        return order.gather(1, choice[:, None]).squeeze(1)

    def _noise(
        self, batch: int, vocab: int, generators: list[torch.Generator | None]
    ) -> torch.Tensor:  # [B, V] ~ Exp(1)
        noise = torch.empty(batch, vocab, device=self.device)
        shared = [i for i, g in enumerate(generators) if g is None]
        if shared:
            noise[shared] = torch.empty(len(shared), vocab, device=self.device).exponential_(
                generator=self.generator
            )
        for i, g in enumerate(generators):
            if g is not None:
                noise[i].exponential_(generator=g)
        return noise


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
