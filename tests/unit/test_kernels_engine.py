"""The engine's exactness (tokens == Hugging Face generate, greedy float32 on the CPU)
with the Triton kernels selected, run by the Triton interpreter.

The interpreter runs every kernel program in Python, so the workload is short: ten
requests with prompts of 1-40 tokens and 1-16 new tokens, arriving over the first steps
of a batch of four, so that newcomers are prefilled and inserted mid-decode.
"""

import random

import pytest
import torch
from binbaton.workers.engine.replay import Arrival, replay

pytest.importorskip("triton")
if torch.cuda.is_available():
    pytest.skip("CUDA present: the kernels compile (tests/unit/test_kernels.py runs them on "
                "cuda)", allow_module_level=True)


def short_workload(num_requests: int = 10, seed: int = 1) -> list[Arrival]:
    from binbaton.workers.engine.request import GenerationRequest, SamplingParams

    rng = random.Random(seed)
    arrivals = []
    for i in range(num_requests):
        max_tokens = rng.randint(1, 16)
        prompt = tuple(rng.randrange(3, 500) for _ in range(rng.randint(1, 40)))
        request = GenerationRequest(
            id=f"k{i}",
            prompt_token_ids=prompt,
            sampling=SamplingParams(max_tokens=max_tokens),
            bin=int(max_tokens > 8),
            predicted_tokens=max_tokens,
        )
        arrivals.append(Arrival(0 if i < 4 else rng.randrange(1, 12), request))
    return arrivals


@pytest.mark.parametrize("checkpoint", ["tiny_llama_dir", "tiny_qwen3_dir"])
def test_engine_with_triton_kernels_matches_hf_generate(checkpoint, request, hf_reference):
    """Llama (MHA) and Qwen3 (GQA, q/k norm through the rms_norm kernel)."""
    from binbaton.kernels import decode_attention, launch
    from binbaton.workers.engine.config import EngineConfig
    from binbaton.workers.engine.engine import Engine

    checkpoint_dir = request.getfixturevalue(checkpoint)
    arrivals = short_workload()
    expected = hf_reference(checkpoint_dir, [a.request for a in arrivals])
    engine = Engine(EngineConfig(model=str(checkpoint_dir), policy="multibin-insert",
                                 max_batch=4, bin_max_batch=(4, 3), kv_budget_tokens=512,
                                 block_size=16, kernel_backend="triton"))
    assert engine.ops.name == "triton"
    assert launch.is_interpreted(decode_attention._decode_split_kernel)
    run = replay(engine, arrivals)
    assert run.mid_decode_admissions > 0  # newcomers joined a batch mid-decode
    got = {rid: list(out.token_ids) for rid, out in run.outputs.items()}
    assert got == expected
