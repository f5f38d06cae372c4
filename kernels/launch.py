"""Launcher helpers shared by the Triton ops: device checks, dtypes, block sizes, SM count.

Imported only by the Triton op modules (it imports triton). A kernel is either compiled
(a ``JITFunction``, CUDA tensors) or interpreted (``TRITON_INTERPRET=1`` was set when the
op module was imported; tensors may live on the CPU). The interpreter stores bfloat16 as
raw uint16 and does arithmetic on that storage, so interpreted kernels upcast bfloat16 to
float32 before any arithmetic or ``tl.dot`` (see ``dot_dtype``).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES: tuple[torch.dtype, ...] = (torch.int32, torch.int64)

# What a program count is compared against where no GPU answers (the interpreter).
INTERPRETER_SM_COUNT = 4


def is_interpreted(kernel: object) -> bool:
    return not isinstance(kernel, JITFunction)


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


def dot_dtype(kernel: object, dtype: torch.dtype) -> tuple[tl.dtype, str]:
    """The operand dtype and input precision of ``tl.dot`` for inputs of ``dtype``.

    float32 uses exact IEEE products (no TF32); fp16/bf16 use tensor cores with float32
    accumulation, except bf16 under the interpreter, which cannot multiply bf16.
    """
    if dtype == torch.float16:
        return tl.float16, "tf32"  # precision only matters for float32 operands
    if dtype == torch.bfloat16 and not is_interpreted(kernel):
        return tl.bfloat16, "tf32"
    return tl.float32, "ieee"


def pad(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum) (tl.arange needs powers of two)."""
    return max(triton.next_power_of_2(n), minimum)


@functools.cache
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_SM_COUNT
    return _cuda_sm_count(device.index if device.index is not None else 0)
