"""Sampling: the vectorized sampler alone, and seeded reproducibility through the engine."""

from __future__ import annotations

import torch
from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.engine import Engine
from binbaton.workers.engine.request import GenerationRequest, SamplingParams
from binbaton.workers.engine.sampler import Sampler, make_generator

LOGITS = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]])  # [1, V], token 0 most likely


def draw(params: SamplingParams, n: int = 400) -> set[int]:
    sampler = Sampler(seed=0, device=torch.device("cpu"))
    logits = LOGITS.expand(n, -1)
    return set(sampler(logits, [params] * n, [None] * n))


def test_top_k_and_top_p_restrict_the_support():
    assert draw(SamplingParams(temperature=1.0)) == set(range(6))
    assert draw(SamplingParams(temperature=1.0, top_k=2)) == {0, 1}
    # softmax mass: 0.64, 0.24, 0.09, ...: top_p 0.8 keeps tokens 0 and 1
    assert draw(SamplingParams(temperature=1.0, top_p=0.8)) == {0, 1}
    assert draw(SamplingParams(temperature=1.0, top_p=0.1)) == {0}


def test_greedy_rows_take_the_argmax_beside_sampled_rows():
    sampler = Sampler(seed=0, device=torch.device("cpu"))
    logits = torch.randn(8, 50)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.5, top_k=1)] * 4
    tokens = sampler(logits, params, [make_generator(i, torch.device("cpu")) for i in range(8)])
    assert tokens == logits.argmax(-1).tolist()


def test_same_seed_same_draws_whatever_the_rows_around_it():
    sampler = Sampler(seed=0, device=torch.device("cpu"))
    row = torch.randn(1, 50)
    params = SamplingParams(temperature=1.0, seed=7)
    alone = sampler(row, [params], [make_generator(7, torch.device("cpu"))])
    mates = torch.cat([torch.randn(3, 50), row, torch.randn(2, 50)])
    gens = [None, make_generator(1, torch.device("cpu")), None,
            make_generator(7, torch.device("cpu")), None, None]
    mixed = sampler(mates, [SamplingParams(temperature=1.0)] * 3 + [params] * 3, gens)
    assert mixed[3] == alone[0]


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
