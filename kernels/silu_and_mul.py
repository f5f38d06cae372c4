"""Fused SiLU-and-multiply of the MLP: ``silu(gate) * up`` from one fused gate_up output.

``x`` is [T, 2I] with the gate in its first half and the up projection in its second;
the product is computed in float32 and stored once in x's dtype (``reference.silu_and_mul``).
One program per (token, block of ``BLOCK`` columns); the intermediate size and the token
count are runtime values, so a model compiles one variant per dtype.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from binbaton.kernels import launch

BLOCK = 1024  # columns per program (fewer for a narrower I)


@triton.jit
def _silu_and_mul_kernel(
    x_ptr, out_ptr,
    stride_xt, stride_ot,
    intermediate,
    BLOCK: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < intermediate
    row = x_ptr + token * stride_xt
    gate = tl.load(row + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(row + intermediate + cols, mask=mask, other=0.0).to(tl.float32)
    out = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + token * stride_ot + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


@functools.cache
def silu_and_mul_config(intermediate: int) -> launch.KernelConfig:
    block = min(BLOCK, launch.pad(intermediate, 16))
    return launch.KernelConfig(dict(BLOCK=block), num_warps=max(1, min(4, block // 256)))


@dataclass(frozen=True)
class SiluPlan:
    """What one argument signature fixes: checked once, reused while it repeats."""

    config: launch.KernelConfig
    grid: tuple[int, int]  # (tokens, column blocks); empty when either is 0
    intermediate: int
    strides: tuple[int, int]  # rows of x, and of out (or the contiguous [T, I] it will be)


_plans: launch.PlanCache[SiluPlan] = launch.PlanCache()


def _check(x: torch.Tensor, out: torch.Tensor | None) -> SiluPlan:
    launch.check_device(_silu_and_mul_kernel, x)
    launch.check_float("x", x)
    if x.dim() != 2 or x.shape[1] % 2:
        raise ValueError(f"x {tuple(x.shape)} must be [T, 2 * intermediate]")
    launch.check_last_contiguous("x", x)
    num_tokens, intermediate = x.shape[0], x.shape[1] // 2
    if out is not None:
        shape = (num_tokens, intermediate)
        if tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device:
            raise ValueError(f"out {tuple(out.shape)} {out.dtype} {out.device} must be "
                             f"{shape} {x.dtype} {x.device}")
        launch.check_last_contiguous("out", out)
    config = silu_and_mul_config(intermediate)
    return SiluPlan(
        config, grid=(num_tokens, launch.cdiv(intermediate, config.constexprs["BLOCK"])),
        intermediate=intermediate,
        strides=(x.stride(0), intermediate if out is None else out.stride(0)),
    )


def silu_and_mul(
    x: torch.Tensor,  # [T, 2I]: gate | up
    out: torch.Tensor | None = None,  # [T, I] in x's dtype (else allocated)
) -> torch.Tensor:  # [T, I]
    plan = _plans.get(launch.signature(x, out), lambda: _check(x, out))
    if out is None:
        out = torch.empty(x.shape[0], plan.intermediate, dtype=x.dtype, device=x.device)
    if plan.grid[0] and plan.grid[1]:
        _silu_and_mul_kernel[plan.grid](
            x, out, *plan.strides, plan.intermediate,
            **plan.config.launch_kwargs,
        )
    return out
