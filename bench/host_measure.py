"""One host-time measurement of ``binbaton bench host``, run in a subprocess of its own.

It imports whatever engine ``binbaton`` names on the path it is run with: the base
commit's (BEFORE) or this tree's (AFTER), through ``bench/host.py``'s package shim.

The engine runs on the CPU with the Triton kernel backend (``TRITON_INTERPRET=1``, set by
the caller before anything imports triton) and every Triton kernel's launch replaced by a
no-op that only counts it (``stub_launches``). So each op wrapper's Python runs as on a GPU
(checks, launch planning, output allocation), the model's torch ops (embedding,
projections) run on tiny tensors, and no kernel computes anything: what a step costs is
host time, engine bookkeeping plus op wrappers plus dispatch, as on a GPU where the host
only queues work. Not counted: the launch inside Triton (the compiled launcher, ~11 us
per kernel on a GPU host in issue 10's review) and a CUDA graph replay's own cost;
``launches_per_step`` says how many launches a step makes, ``torch_ops_per_step`` how
many torch ops that compute or copy (each a kernel or a copy on a GPU; counted in one more,
untimed step).

Variants: ``eager``, every step's decode forward runs op by op (BEFORE has only this);
``replay``, the decode forward over the runner's static buffers (what a CUDA graph
captures) is skipped, standing in for one graph replay (AFTER on a GPU).
"""

from __future__ import annotations

import importlib
import pkgutil
import statistics
import time
from typing import Any

import binbaton.kernels
import torch
from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.engine import Engine
from binbaton.workers.engine.request import GenerationRequest, SamplingParams
from torch.utils._python_dispatch import TorchDispatchMode

PROMPT_TOKENS = 16
MAX_TOKENS = 512
VARIANTS = ("eager", "replay")


class NoLaunch:
    """A Triton kernel whose launches do nothing but count (``kernel[grid](...)``)."""

    def __init__(self, kernel: Any, counter: list[int]):
        self.kernel, self.counter = kernel, counter

    def __getitem__(self, grid: Any) -> Any:
        def launch(*args: Any, **kwargs: Any) -> None:
            self.counter[0] += 1

        return launch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kernel, name)


def stub_launches() -> list[int]:
    """Replace every ``*_kernel`` Triton function of ``binbaton.kernels`` by a NoLaunch;
    returns the launch counter (one cell)."""
    counter = [0]
    for info in pkgutil.iter_modules(binbaton.kernels.__path__):
        if info.name in ("aot", "ops", "reference"):
            continue
        module = importlib.import_module(f"binbaton.kernels.{info.name}")
        for name, obj in list(vars(module).items()):
            kind = type(obj).__name__
            if name.endswith("_kernel") and kind in ("JITFunction", "InterpretedFunction"):
                setattr(module, name, NoLaunch(obj, counter))
    return counter


def measure(checkpoint: str, batch: int, steps: int, warmup: int,
            variant: str = "eager") -> dict[str, float]:
    """Time decode steps of ``batch`` sequences with whatever engine ``binbaton`` is.

    Per step: the process's CPU time (lower decile: other work on shared cores only adds
    time), the part of it inside the decode forward (eager only), wall time, launches.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {VARIANTS}")
    torch.set_num_threads(1)
    launches = stub_launches()
    engine = Engine(EngineConfig(
        model=checkpoint, policy="static", max_batch=batch, kernel_backend="triton",
        kv_budget_tokens=batch * (PROMPT_TOKENS + MAX_TOKENS),
    ))
    vocab = engine.model.shape.vocab_size
    for i in range(batch):
        prompt = tuple(3 + (7 * i + j) % (vocab - 3) for j in range(PROMPT_TOKENS))
        engine.add(GenerationRequest(id=f"h{i}", prompt_token_ids=prompt,
                                     sampling=SamplingParams(max_tokens=MAX_TOKENS,
                                                             ignore_eos=True)))
    forward_cpu_s = _time_forward(engine.model)
    replays = [0]
    if variant == "replay":
        runner: Any = engine.runner  # AFTER only: BEFORE has no runner

        def replay_stand_in(bucket: int) -> None:
            replays[0] += 1

        runner._decode_forward = replay_stand_in
    engine.step()  # prefill (and a first decode step)
    for _ in range(warmup):
        engine.step()
    wall, cpu, forward = [], [], []
    launches_before, replays_before = launches[0], replays[0]
    for _ in range(steps):
        forward_cpu_s.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        engine.step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        forward.append(sum(forward_cpu_s))
        assert engine.last_step.decode_tokens == batch and engine.last_step.admitted == 0
    launched, replayed = launches[0] - launches_before, replays[0] - replays_before
    torch_ops = _count_torch_ops(engine)
    assert engine.last_step.decode_tokens == batch and engine.last_step.admitted == 0
    return {
        "wall_ms_per_step": 1000 * statistics.median(wall),
        "wall_ms_p99": 1000 * sorted(wall)[min(len(wall) - 1, int(0.99 * len(wall)))],
        "cpu_ms_per_step": 1000 * _lower_decile(cpu),
        "forward_cpu_ms_per_step": 1000 * _lower_decile(forward),
        "engine_cpu_ms_per_step": 1000 * _lower_decile(
            [c - f for c, f in zip(cpu, forward, strict=True)]
        ),
        "launches_per_step": launched / steps,
        "graph_replays_per_step": replayed / steps,
        "torch_ops_per_step": torch_ops,
    }


READ_BACK = ("item", "_local_scalar_dense")  # a device value to the host: a copy and a sync


class _TorchOps(TorchDispatchMode):
    """Counts the aten ops dispatched that compute or copy: those returning a tensor that
    is not a view or a fresh allocation, and reads back to the host. On a GPU each is a
    kernel launch or a copy, beside the Triton launches (``promote_types`` and the like,
    host-only, are not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        name = func.__name__.split(".")[0]
        returns_tensor = any("Tensor" in str(r.type) for r in func._schema.returns)
        if name in READ_BACK or (returns_tensor and not func.is_view
                                 and not name.startswith("empty")):
            self.count += 1
        return func(*args, **(kwargs or {}))


def _count_torch_ops(engine: Engine) -> int:
    """Torch ops of one more decode step (untimed: the counting costs host time)."""
    with _TorchOps() as counter:
        engine.step()
    return counter.count


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
