"""One interface for the engine's attention, cache, norm and activation ops.

The engine calls ``ops = select_ops(backend, device)`` once and then only ``ops.<name>``.
``torch`` is the reference twin (any device), ``triton`` the Triton kernels (CUDA, or the
CPU under TRITON_INTERPRET=1), ``auto`` picks triton on CUDA and torch elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from binbaton.kernels import reference

Backend = Literal["auto", "torch", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")


@dataclass(frozen=True)
class KernelOps:
    name: str
    store_kv: Callable[..., None]
    decode_attention: Callable[..., torch.Tensor]
    prefill_attention: Callable[..., torch.Tensor]
    rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    # store_kv that first rotates query and key in place (rotate_half rope), see reference
    rope_store_kv: Callable[..., None]
    # silu(x[:, :I]) * x[:, I:] of a fused gate_up projection [T, 2I] -> [T, I]
    silu_and_mul: Callable[..., torch.Tensor]
    # rms_norm (out=, residual_out=) and silu_and_mul (out=) write into caller-provided
    # outputs; the torch twins return fresh tensors (silu_and_mul would copy into out)
    writes_out: bool = False


TORCH_OPS = KernelOps(
    name="torch",
    store_kv=reference.store_kv,
    decode_attention=reference.decode_attention,
    prefill_attention=reference.prefill_attention,
    rms_norm=reference.rms_norm,
    rope_store_kv=reference.rope_store_kv,
    silu_and_mul=reference.silu_and_mul,
)


def triton_available(device: torch.device) -> bool:
    """Triton runs on CUDA, or anywhere under the interpreter."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def triton_ops() -> KernelOps:
    from binbaton.kernels import triton_ops as t  # imports triton

    return KernelOps(
        name="triton",
        store_kv=t.store_kv,
        decode_attention=t.decode_attention,
        prefill_attention=t.prefill_attention,
        rms_norm=t.rms_norm,
        rope_store_kv=t.rope_store_kv,
        silu_and_mul=t.silu_and_mul,
        writes_out=True,
    )


def select_ops(backend: str, device: torch.device) -> KernelOps:
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend {backend!r} is not one of {BACKENDS}")
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return TORCH_OPS
    if not triton_available(device):
        raise RuntimeError(
            f"kernel backend {backend!r} needs triton on CUDA (or TRITON_INTERPRET=1 on CPU); "
            f"device is {device}"
        )
    return triton_ops()
