"""The engine's timeline (admitted → prefill finished → first token → inserted → finished),
recorded by the real engine on a tiny checkpoint, and the spans GenerationTimeline makes
of it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from binbaton.service.telemetry.tracing import (
    DECODE,
    KV_INSERT,
    MEASURED,
    PREFILL,
    GenerationTimeline,
)
from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.engine import Engine
from binbaton.workers.engine.request import GenerationRequest, SamplingParams


def run(model: Path, policy: str, max_tokens: list[int]) -> list:
    torch.set_num_threads(1)
    engine = Engine(EngineConfig(model=str(model), policy=policy, max_batch=2,
                                 kernel_backend="torch"))
    requests = [GenerationRequest(id=f"r{i}", prompt_token_ids=(1, 5 + i, 9),
                                  sampling=SamplingParams(max_tokens=n, ignore_eos=True))
                for i, n in enumerate(max_tokens)]
    return engine.generate(requests)


def test_insertion_records_every_stage_in_order(tiny_llama_dir: Path) -> None:
    # max_batch 2: r2 waits and is inserted once r0 (2 tokens) finishes mid-flight.
    outputs = run(tiny_llama_dir, "insert", [2, 6, 4, 1])
    for out in outputs[:3]:
        assert out.ok
        assert (out.admitted_at <= out.prefill_finished_at <= out.first_token_at
                <= out.inserted_at <= out.finished_at), out
    # r2 joined a batch already running: it was admitted after r1's first decode step.
    assert outputs[2].admitted_at > outputs[1].inserted_at
    done_on_first = outputs[3]  # max_tokens 1: never decoded with the batch
    assert done_on_first.prefill_finished_at is not None and done_on_first.inserted_at is None

    stages = GenerationTimeline.from_output(outputs[2], outputs[2].admitted_at - 0.01).stages()
    names = [name for name, *_ in stages]
    assert names == ["queue wait", PREFILL, KV_INSERT, DECODE]
    assert all(start <= end for _, start, end, _ in stages)
    assert all(stages[i][2] == stages[i + 1][1] for i in range(3))  # contiguous
    assert dict((n, a) for n, _, _, a in stages)[KV_INSERT][MEASURED] is True
    assert dict((n, a) for n, _, _, a in stages)[PREFILL][MEASURED] is True


@pytest.mark.parametrize("policy", ["static", "multibin-static"])
def test_static_batches_report_no_insertion(tiny_llama_dir: Path, policy: str) -> None:
    outputs = run(tiny_llama_dir, policy, [3, 3, 2])
    for out in outputs:
        assert out.ok and out.inserted_at is None
        assert out.admitted_at <= out.prefill_finished_at <= out.first_token_at
    stages = GenerationTimeline.from_output(outputs[0], outputs[0].admitted_at).stages()
    insert = [a for n, _, _, a in stages if n == KV_INSERT]
    assert insert == [{MEASURED: False}]
