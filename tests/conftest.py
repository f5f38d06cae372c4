"""Shared fixtures: tiny random checkpoints (real config, safetensors, tokenizer) on disk."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

# Workers keep per-message attempt records (workers/attempts.py) under $XDG_STATE_HOME:
# this session's, and its subprocesses', go to a fresh directory, not the user's.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="binbaton-test-state-")

# Triton decides interpreted vs compiled when it is first imported: without CUDA, the
# kernel tests run under the interpreter, so switch it on before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, arch: str) -> Path:
    import torch
    from binbaton.workers.engine.tiny import save_tiny_checkpoint

    torch.set_num_threads(1)  # 2 shared cores; tiny models gain nothing from threads
    return save_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny-{arch}"), arch=arch, seed=0)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama with Llama-3 rope scaling."""
    return _tiny_checkpoint(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mistral with grouped-query attention."""
    return _tiny_checkpoint(tmp_path_factory, "mistral")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2: q/k/v bias, tied embeddings."""
    return _tiny_checkpoint(tmp_path_factory, "qwen2")


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3: q/k norm, explicit head_dim."""
    return _tiny_checkpoint(tmp_path_factory, "qwen3")


# ---- engine exactness against Hugging Face generate -----------------------------------
# Import helpers from binbaton.workers.engine.replay, never from this conftest: under a
# full-suite run ``conftest`` may name tests/integration/conftest.py instead.

def exactness_workload(num_requests: int = 64, seed: int = 0) -> list[Any]:  # [Arrival]
    """Prompts of 1-200 tokens, max_tokens 1-100, arriving at staggered steps.

    Bins are max_tokens terciles; predicted_tokens is deliberately off (half to 1.5x) so
    multi-bin reservations are sometimes too small and sequences must grow (or be
    preempted and recomputed).
    """
    import random

    from binbaton.workers.engine.replay import Arrival
    from binbaton.workers.engine.request import GenerationRequest, SamplingParams

    rng = random.Random(seed)
    steps = [0] * 8 + sorted(rng.randrange(1, 150) for _ in range(num_requests - 8))
    arrivals = []
    for i, step in enumerate(steps[:num_requests]):
        max_tokens = rng.randint(1, 100)
        prompt = tuple(rng.randrange(3, 500) for _ in range(rng.randint(1, 200)))
        request = GenerationRequest(
            id=f"r{i}",
            prompt_token_ids=prompt,
            sampling=SamplingParams(max_tokens=max_tokens),
            bin=min(2, (max_tokens - 1) // 34),
            predicted_tokens=max(1, int(max_tokens * rng.uniform(0.5, 1.5))),
        )
        arrivals.append(Arrival(step, request))
    return arrivals


def hf_greedy(checkpoint_dir: Path, requests: list[Any]) -> dict[str, list[int]]:
    """Hugging Face generate (greedy, float32, CPU) on each request alone."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32).eval()
    tokens = {}
    with torch.inference_mode():
        for request in requests:
            ids = torch.tensor([request.prompt_token_ids])  # [1, L]
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=request.sampling.max_tokens,
            )
            tokens[request.id] = out[0, ids.shape[1] :].tolist()
    return tokens


@pytest.fixture(scope="session")
def hf_reference() -> Callable[[Path, list[Any]], dict[str, list[int]]]:
    """HF greedy tokens per (checkpoint, workload), computed once per session."""
    cache: dict[tuple[str, tuple[str, ...]], dict[str, list[int]]] = {}

    def reference(checkpoint_dir: Path, requests: list[Any]) -> dict[str, list[int]]:
        key = (str(checkpoint_dir), tuple(r.id for r in requests))
        if key not in cache:
            cache[key] = hf_greedy(checkpoint_dir, requests)
        return cache[key]

    return reference


@pytest.fixture(scope="session")
def run_exactness(
    hf_reference: Callable[[Path, list[Any]], dict[str, list[int]]],
) -> Callable[..., Any]:
    """``run_exactness(checkpoint_dir, policy, kernel_backend="torch", num_requests=64,
    **config_overrides)``: run the staggered workload through the engine and assert every
    request's tokens equal Hugging Face generate on that request alone (the reference is
    computed once per checkpoint and workload). Returns the run for further checks."""
    from binbaton.workers.engine.config import EngineConfig
    from binbaton.workers.engine.engine import Engine
    from binbaton.workers.engine.replay import replay

    def run(
        checkpoint_dir: Path,
        policy: str,
        kernel_backend: str = "torch",
        num_requests: int = 64,
        **config_overrides: Any,
    ) -> Any:  # ReplayRun
        arrivals = exactness_workload(num_requests)
        expected = hf_reference(checkpoint_dir, [a.request for a in arrivals])
        settings: dict[str, Any] = dict(
            model=str(checkpoint_dir),
            policy=policy,
            max_batch=8,
            kv_budget_tokens=2048,  # ~6 full-length requests: the cache limits admission
            block_size=16,
            bin_max_batch=(8, 6, 4) if policy.startswith("multibin") else None,
            kernel_backend=kernel_backend,
        )
        config = EngineConfig(**(settings | config_overrides))
        result = replay(Engine(config), arrivals)
        assert len(result.outputs) == len(arrivals)
        wrong = [
            (rid, expected[rid], list(out.token_ids))
            for rid, out in result.outputs.items()
            if list(out.token_ids) != expected[rid]
        ]
        assert not wrong, f"{len(wrong)} requests differ from HF generate, first: {wrong[0]}"
        return result

    return run
