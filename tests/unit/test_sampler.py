"""Sampling: the vectorized sampler alone, and seeded reproducibility through the engine."""

from __future__ import annotations

import torch
from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.engine import Engine
from binbaton.workers.engine.request import GenerationRequest, SamplingParams
from binbaton.workers.engine.sampler import Sampler, SamplingRows, seed_key

CPU = torch.device("cpu")
LOGITS = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]])  # [1, V], token 0 most likely


def sample(logits: torch.Tensor, params: list[SamplingParams], seeds: list[int],
           counters: torch.Tensor | None = None) -> list[int]:
    """One draw per row; row i is its request's token number counters[i] (default i)."""
    batch, vocab = logits.shape
    rows = SamplingRows.of(params, [seed_key(s) for s in seeds], vocab, CPU)
    counters = torch.arange(batch) if counters is None else counters
    return Sampler(vocab, CPU)(logits, rows, counters).tolist()


def draw(params: SamplingParams, n: int = 2000) -> list[int]:
    """n draws from LOGITS: one request's tokens 0 .. n-1."""
    return sample(LOGITS.expand(n, -1), [params] * n, [0] * n)


def test_top_k_and_top_p_restrict_the_support():
    assert set(draw(SamplingParams(temperature=1.0))) == set(range(6))
    assert set(draw(SamplingParams(temperature=1.0, top_k=2))) == {0, 1}
    # softmax mass: 0.64, 0.24, 0.09, ...: top_p 0.8 keeps tokens 0 and 1
    assert set(draw(SamplingParams(temperature=1.0, top_p=0.8))) == {0, 1}
    assert set(draw(SamplingParams(temperature=1.0, top_p=0.1))) == {0}


def test_draws_follow_the_softmax():
    """20,000 draws: each token's frequency within 0.015 (over 4 sigma) of its probability."""
    for temperature in (1.0, 2.0):
        tokens = torch.tensor(draw(SamplingParams(temperature=temperature), n=20_000))
        frequency = torch.bincount(tokens, minlength=6) / len(tokens)
        expected = (LOGITS[0] / temperature).softmax(-1)
        assert (frequency - expected).abs().max() < 0.015, (frequency, expected)


def test_greedy_rows_take_the_argmax_beside_sampled_rows():
    logits = torch.randn(8, 50)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.5, top_k=1)] * 4
    assert sample(logits, params, list(range(8))) == logits.argmax(-1).tolist()
    assert Sampler(50, CPU)(logits, None, torch.zeros(8)).tolist() == logits.argmax(-1).tolist()


def test_same_seed_same_draws_whatever_the_rows_around_it():
    row = torch.randn(1, 50)
    params = SamplingParams(temperature=1.0, seed=7)
    alone = [sample(row, [params], [7], torch.tensor([t]))[0] for t in range(20)]
    mixed = []
    for t in range(20):
        mates = torch.cat([torch.randn(3, 50), row, torch.randn(2, 50)])
        counters = torch.tensor([t + 3, 2 * t, 5, t, 1, 0])
        mixed.append(sample(mates, [SamplingParams(temperature=1.0)] * 3 + [params] * 3,
                            [1, 2, 3, 7, 9, 7], counters)[3])
    assert mixed == alone
    assert len(set(alone)) > 1  # token numbers draw afresh
    other_seed = [sample(row, [params], [8], torch.tensor([t]))[0] for t in range(20)]
    assert other_seed != alone


def test_any_integer_seed_has_a_32_bit_key():
    for seed in (0, 1, 2**63, 2**64 + 5, -1, 10**30):
        assert 0 <= seed_key(seed) < 2**32
    assert seed_key(2**64 + 5) == seed_key(5)
    assert len({seed_key(s) for s in range(1000)}) == 1000


def requests(prefix: str, n: int, **sampling) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            id=f"{prefix}{i}",
            prompt_token_ids=tuple(range(5 + 3 * i, 20 + 5 * i)),
            sampling=SamplingParams(max_tokens=12 + i, ignore_eos=True, **sampling),
        )
        for i in range(n)
    ]


def test_seeded_sampling_reproducible_across_batch_mates(tiny_qwen2_dir):
    engine = Engine(EngineConfig(model=str(tiny_qwen2_dir), policy="insert", max_batch=8))
    seeded = GenerationRequest(
        id="seeded",
        prompt_token_ids=(5, 6, 7, 8, 9),
        sampling=SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, top_k=50, seed=1234,
                                ignore_eos=True),
    )
    alone = engine.generate([seeded])[0]
    crowd = engine.generate([*requests("a", 3, temperature=1.0), seeded,
                             *requests("b", 3, temperature=0.7, seed=5)])
    late = requests("c", 4, temperature=1.2)
    engine.add(late[0])
    engine.add(late[1])
    engine.step()
    with_others = engine.generate([seeded, late[2], late[3]])[0]
    assert crowd[3].token_ids == alone.token_ids
    assert with_others.token_ids == alone.token_ids
    other_seed = engine.generate([GenerationRequest(
        id="other", prompt_token_ids=seeded.prompt_token_ids,
        sampling=SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, top_k=50, seed=99,
                                ignore_eos=True),
    )])[0]
    assert other_seed.token_ids != alone.token_ids


def test_temperature_zero_and_top_k_one_equal_greedy(tiny_qwen2_dir):
    engine = Engine(EngineConfig(model=str(tiny_qwen2_dir), policy="insert", max_batch=8))
    greedy = engine.generate(requests("g", 3))
    temp0 = engine.generate(requests("t", 3, temperature=0.0, top_p=0.5, top_k=7))
    top1 = engine.generate(requests("k", 3, temperature=1.3, top_k=1, seed=3))
    assert [o.token_ids for o in temp0] == [o.token_ids for o in greedy]
    assert [o.token_ids for o in top1] == [o.token_ids for o in greedy]


def test_huge_seed_and_top_k_are_served(tiny_qwen2_dir):
    engine = Engine(EngineConfig(model=str(tiny_qwen2_dir), policy="insert", max_batch=4))
    huge = requests("h", 2, temperature=0.8, top_k=2**64, seed=2**64 + 3)
    out = engine.generate(huge)
    assert all(o.ok and len(o.token_ids) == 12 + i for i, o in enumerate(out))
