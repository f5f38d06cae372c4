"""One host-time measurement of ``binbaton bench host``, run in a subprocess of its own.

It imports whatever engine ``binbaton`` names on the path it is run with: the base
commit's (BEFORE) or this tree's (AFTER), through ``bench/host.py``'s package shim.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.engine import Engine
from binbaton.workers.engine.request import GenerationRequest, SamplingParams

PROMPT_TOKENS = 16
MAX_TOKENS = 512
ENGINE_ALONE_WARMUP, ENGINE_ALONE_STEPS = 10, 200  # steps are short without the forward


def measure(checkpoint: str, batch: int, steps: int, warmup: int) -> dict[str, float]:
    """Time decode steps of ``batch`` sequences with whatever engine ``binbaton`` is.

    Per step: wall time, and the process's CPU time in total and inside the model's
    forward (CPU time is what other work on shared cores disturbs least).
    """
    torch.set_num_threads(1)
    engine = Engine(EngineConfig(
        model=checkpoint, policy="static", max_batch=batch, kernel_backend="torch",
        kv_budget_tokens=batch * (PROMPT_TOKENS + MAX_TOKENS),
    ))
    vocab = engine.model.shape.vocab_size
    for i in range(batch):
        prompt = tuple(3 + (7 * i + j) % (vocab - 3) for j in range(PROMPT_TOKENS))
        engine.add(GenerationRequest(id=f"h{i}", prompt_token_ids=prompt,
                                     sampling=SamplingParams(max_tokens=MAX_TOKENS,
                                                             ignore_eos=True)))
    forward_cpu_s = _time_forward(engine.model)
    engine.step()  # prefill (and a first decode step)
    for _ in range(warmup):
        engine.step()
    wall, cpu, forward = [], [], []
    for _ in range(steps):
        forward_cpu_s.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        engine.step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        forward.append(sum(forward_cpu_s))
        assert engine.last_step.decode_tokens == batch and engine.last_step.admitted == 0
    # The engine alone: the forward replaced by fixed logits, as on a GPU where the forward
    # runs on the device (one graph replay) and leaves the host's caches to the engine.
    fixed_logits = torch.randn(batch, vocab)
    model: Any = engine.model
    model.forward = lambda *args, **kwargs: fixed_logits
    alone = []
    for i in range(ENGINE_ALONE_WARMUP + ENGINE_ALONE_STEPS):
        c0 = time.process_time()
        engine.step()
        if i >= ENGINE_ALONE_WARMUP:
            alone.append(time.process_time() - c0)
    return {
        "wall_ms_per_step": 1000 * statistics.median(wall),
        "wall_ms_p99": 1000 * sorted(wall)[min(len(wall) - 1, int(0.99 * len(wall)))],
        "cpu_ms_per_step": 1000 * _lower_decile(cpu),
        "forward_cpu_ms_per_step": 1000 * _lower_decile(forward),
        "engine_cpu_ms_per_step": 1000 * _lower_decile(
            [c - f for c, f in zip(cpu, forward, strict=True)]
        ),
        "engine_alone_cpu_ms_per_step": 1000 * _lower_decile(alone),
    }


def _lower_decile(values: list[float]) -> float:
    return sorted(values)[len(values) // 10]


def _time_forward(model: Any) -> list[float]:
    """Record the CPU time of every call of ``model``'s forward into the returned list."""
    seconds: list[float] = []
    forward = model.forward

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return forward(*args, **kwargs)
        finally:
            seconds.append(time.process_time() - start)

    model.forward = timed
    return seconds
