"""The decode step's host path: no device syncs but the one transfer of the sampled ids.

Every way a tensor's value reaches the host (``item``, ``tolist``, truthiness, ``int``,
``float``, ``cpu``, ``numpy``, ...) and every ``torch.tensor`` built from a Python list is
counted while a tiny model decodes a batch of greedy and seeded sampled sequences. Calls
made by the kernel ops themselves (``binbaton/kernels``: the torch twins read lengths
back; the Triton ops take them from the host) are not the engine's and are not counted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch
from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.engine import Engine
from binbaton.workers.engine.request import GenerationRequest, SamplingParams

SYNCING_METHODS = (
    "item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__",
)
LIST_TO_TENSOR = ("tensor", "as_tensor")
KERNELS_DIR = os.sep + "kernels" + os.sep


def _caller() -> str:
    frame = sys._getframe(2)  # 0: this, 1: the counting wrapper, 2: who called it
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


@pytest.fixture
def host_syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(what, where) of every counted call from outside the kernel ops, while active."""
    events: list[tuple[str, str]] = []

    def counting(name: str, original: Callable[..., Any], lists_only: bool) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            where = _caller()
            from_list = bool(args) and isinstance(args[0], (list, tuple))
            if KERNELS_DIR not in where and (from_list or not lists_only):
                events.append((name, where))
            return original(*args, **kwargs)

        return wrapper

    for name in SYNCING_METHODS:
        monkeypatch.setattr(torch.Tensor, name,
                            counting(name, getattr(torch.Tensor, name), lists_only=False))
    for name in LIST_TO_TENSOR:
        monkeypatch.setattr(torch, name, counting(name, getattr(torch, name), lists_only=True))
    return events


def test_a_decode_step_transfers_the_sampled_ids_once_and_nothing_else(tiny_llama_dir, request):
    engine = Engine(EngineConfig(model=str(tiny_llama_dir), policy="insert", max_batch=8,
                                 kv_budget_tokens=2048))
    for i in range(6):
        sampled = dict(temperature=0.8, top_k=20, top_p=0.9, seed=i) if i % 2 else {}
        engine.add(GenerationRequest(
            id=f"s{i}", prompt_token_ids=tuple(range(5 + i, 25 + 3 * i)),
            sampling=SamplingParams(max_tokens=30, ignore_eos=True, **sampled),
        ))
    engine.step()  # admits and prefills all six
    assert engine.last_step.admitted == 6
    events = request.getfixturevalue("host_syncs")
    for _ in range(4):
        events.clear()
        engine.step()
        assert engine.last_step.admitted == 0
        assert engine.last_step.decode_tokens == 6
        assert [name for name, _ in events] == ["tolist"], events
