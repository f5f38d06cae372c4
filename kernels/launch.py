"""Launcher helpers shared by the Triton ops: checks, checked-signature caches, dtypes,
block sizes, the device's SM count and compute capability, kernel configurations.

Imported only by the Triton op modules (it imports triton). A kernel is either compiled
(a ``JITFunction``, CUDA tensors) or interpreted (``TRITON_INTERPRET=1`` was set when the
op module was imported; tensors may live on the CPU). The interpreter stores bfloat16 as
raw uint16 and does arithmetic on that storage, so interpreted kernels upcast bfloat16 to
float32 before any arithmetic or ``tl.dot`` (see ``dot_dtype``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES: tuple[torch.dtype, ...] = (torch.int32, torch.int64)

# What a program count and the tile tables see where no GPU answers (the interpreter).
INTERPRETER_SM_COUNT = 4
INTERPRETER_CAPABILITY = (9, 0)

Capability = tuple[int, int]
Plan = TypeVar("Plan")


def is_interpreted(kernel: object) -> bool:
    return not isinstance(kernel, JITFunction)


# ------------------------------------------------------------------------ checks


def check_device(kernel: object, *tensors: torch.Tensor) -> None:
    """All tensors on one device, and on CUDA unless the kernel is interpreted."""
    device = tensors[0].device
    for t in tensors:
        if t.device != device:
            raise ValueError(f"tensors on different devices: {t.device} vs {device}")
    if device.type != "cuda" and not is_interpreted(kernel):
        raise RuntimeError(
            f"Triton kernels need CUDA tensors (got {device}); on the CPU set "
            "TRITON_INTERPRET=1 before binbaton.kernels.triton_ops is first imported"
        )


def check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be one of {FLOAT_DTYPES}, got {t.dtype}")


def check_index(name: str, t: torch.Tensor) -> None:
    if t.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name} must be int32 or int64, got {t.dtype}")


def check_last_contiguous(name: str, t: torch.Tensor) -> None:
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension, strides {t.stride()}")


def check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")


def check_output(name: str, out: torch.Tensor, like: torch.Tensor,
                 dtype: torch.dtype | None = None) -> None:
    """A caller-provided output: like's shape and device, ``dtype`` (default like's)."""
    dtype = like.dtype if dtype is None else dtype
    if out.shape != like.shape or out.dtype != dtype or out.device != like.device:
        raise ValueError(
            f"{name} {tuple(out.shape)} {out.dtype} {out.device} must be "
            f"{tuple(like.shape)} {dtype} {like.device}"
        )
    check_last_contiguous(name, out)


# ------------------------------------------------------------------------ checked signatures


def signature(*tensors: torch.Tensor | None) -> tuple[Hashable, ...]:
    """Everything a launcher's checks and plan read of its tensors: shape, strides, dtype,
    device. (A plain loop: a generator costs more than the key on a launcher's hot path.)"""
    key: list[Hashable] = []
    for t in tensors:
        key.append(None if t is None else (t.shape, t.stride(), t.dtype, t.device))
    return tuple(key)


_PLAN_CACHES: list[PlanCache[Any]] = []


class PlanCache(Generic[Plan]):
    """A launcher's plans by argument signature: checks and configuration run once per
    signature, and the plan keeps all they derive (tile config, grid, stride arguments),
    so a repeated call is this lookup and the launch. A signature whose checks raised is
    never stored, so it raises every time."""

    def __init__(self, limit: int = 4096):
        self.limit = limit
        self.plans: dict[Hashable, Plan] = {}
        _PLAN_CACHES.append(self)

    def get(self, key: Hashable, make: Callable[[], Plan]) -> Plan:
        plan = self.plans.get(key)
        if plan is None:
            plan = make()
            if len(self.plans) >= self.limit:  # e.g. prefill's token counts: start over
                self.plans.clear()
            self.plans[key] = plan
        return plan


def clear_plans() -> None:
    """Forget every launcher's plans (after changing INTERPRETER_CAPABILITY, in tests)."""
    for cache in _PLAN_CACHES:
        cache.plans.clear()


# ------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class KernelConfig:
    """A kernel's compile-time parameters: its constexprs and the compiler's options.

    Built by each op's config function, which the launcher and the ahead-of-time compile
    (binbaton.kernels.aot) both call; ``launch_kwargs`` is what the launch passes."""

    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 1
    launch_kwargs: dict[str, Any] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        kwargs = {**self.constexprs, "num_warps": self.num_warps, "num_stages": self.num_stages}
        object.__setattr__(self, "launch_kwargs", kwargs)


def dot_dtype(interpreted: bool, dtype: torch.dtype) -> tuple[tl.dtype, str]:
    """The operand dtype and input precision of ``tl.dot`` for inputs of ``dtype``.

    float32 uses exact IEEE products (no TF32); fp16/bf16 use tensor cores with float32
    accumulation, except bf16 under the interpreter, which cannot multiply bf16.
    """
    if dtype == torch.float16:
        return tl.float16, "tf32"  # precision only matters for float32 operands
    if dtype == torch.bfloat16 and not interpreted:
        return tl.bfloat16, "tf32"
    return tl.float32, "ieee"


def cdiv(n: int, d: int) -> int:
    """ceil(n / d) in plain Python (``triton.cdiv`` is a jit function, slow to call)."""
    return -(-n // d)


def pad(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum) (tl.arange needs powers of two)."""
    return max(triton.next_power_of_2(n), minimum)


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.cache
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_SM_COUNT
    return _cuda_sm_count(_cuda_index(device))


@functools.cache
def _cuda_capability(index: int) -> Capability:
    major, minor = torch.cuda.get_device_capability(index)
    return major, minor


def capability(device: torch.device) -> Capability:
    """The device's compute capability, which picks the tiles; a fixed one off CUDA."""
    if device.type != "cuda":
        return INTERPRETER_CAPABILITY
    return _cuda_capability(_cuda_index(device))
