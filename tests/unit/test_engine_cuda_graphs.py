"""The engine's CUDA-graph decode path: one graph per batch bucket, replayed each step,
giving the same tokens as the same static buffers run eagerly. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
from binbaton.workers.engine.replay import Arrival, replay

pytest.importorskip("triton")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def workload(num_requests: int = 24) -> list[Arrival]:
    """Staggered greedy and seeded sampled requests, so buckets change from step to step."""
    import random

    from binbaton.workers.engine.request import GenerationRequest, SamplingParams

    rng = random.Random(3)
    arrivals = []
    for i in range(num_requests):
        sampled = dict(temperature=0.9, top_p=0.95, seed=i) if i % 3 == 0 else {}
        request = GenerationRequest(
            id=f"g{i}",
            prompt_token_ids=tuple(rng.randrange(3, 500) for _ in range(rng.randint(1, 60))),
            sampling=SamplingParams(max_tokens=rng.randint(1, 40), **sampled),
        )
        arrivals.append(Arrival(0 if i < 5 else rng.randrange(1, 40), request))
    return arrivals


@pytest.mark.parametrize("checkpoint", ["tiny_llama_dir", "tiny_qwen3_dir"])
def test_graphs_replay_the_eager_tokens(checkpoint, request):
    from binbaton.workers.engine.config import EngineConfig
    from binbaton.workers.engine.engine import Engine

    checkpoint_dir = request.getfixturevalue(checkpoint)
    settings = dict(model=str(checkpoint_dir), device="cuda", policy="insert", max_batch=12,
                    kv_budget_tokens=4096, kernel_backend="triton")
    graphed = Engine(EngineConfig(**settings))
    assert sorted(graphed.runner.graphs) == list(graphed.config.decode_buckets) == [1, 2, 4, 8, 12]
    eager = Engine(EngineConfig(**settings, cuda_graphs=False))
    assert not eager.runner.graphs
    arrivals = workload()
    with_graphs, without = replay(graphed, arrivals), replay(eager, arrivals)
    tokens = {rid: out.token_ids for rid, out in with_graphs.outputs.items()}
    assert tokens == {rid: out.token_ids for rid, out in without.outputs.items()}
    assert all(out.ok for out in with_graphs.outputs.values())
    assert graphed.cache.allocator.num_free == graphed.cache.num_blocks
