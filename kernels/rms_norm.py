"""Fused RMSNorm with optional residual add; a program normalises one or several rows.

Semantics of ``reference.rms_norm``: ``hidden = x + residual`` rounded to x's dtype (this
is the new residual), normalised in float32, cast back to x's dtype, then multiplied by
the weight (result in the promoted dtype of weight and x, as torch does). Compile-time
parameters are the hidden size's block, the rows per program it implies, and whether a
residual is added; the row count is a runtime value.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from binbaton.kernels import launch

ROW_ELEMENTS = 4096  # elements per program: rows of a short hidden size share a program


@triton.jit(do_not_specialize=["num_rows"])
def _rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr,
    stride_x, stride_r, stride_o, stride_ro,
    num_rows, hidden_size, eps,
    HAS_RESIDUAL: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]  # [R, 1]
    cols = tl.arange(0, BLOCK)[None, :]  # [1, H]
    mask = (rows < num_rows) & (cols < hidden_size)
    x = tl.load(x_ptr + rows * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + rows * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)  # x + residual
        tl.store(residual_out_ptr + rows * stride_ro + cols, x, mask=mask)
    h = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(h * h, 1) / hidden_size + eps)[:, None]  # [R, 1]
    normed = (h * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=cols < hidden_size, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows * stride_o + cols, w * normed, mask=mask)


@functools.cache
def rms_norm_config(hidden_size: int, has_residual: bool) -> launch.KernelConfig:
    """Rows of a short hidden size share a program: ``ROW_ELEMENTS`` elements per program."""
    block = launch.pad(hidden_size)
    rows = max(1, ROW_ELEMENTS // block)
    return launch.KernelConfig(
        dict(HAS_RESIDUAL=has_residual, ROWS=rows, BLOCK=block),
        num_warps=min(16, max(1, rows * block // 256)),
    )


@dataclass(frozen=True)
class NormPlan:
    """What one argument signature fixes: checked once, reused while it repeats."""

    config: launch.KernelConfig
    out_dtype: torch.dtype
    grid: tuple[int]  # (0,) for no rows: nothing to launch
    num_rows: int
    reshape: bool  # x (or residual) is not a view as [R, H]: the launch passes a copy
    strides: tuple[int, int, int, int]  # rows of x, residual, out, residual_out


_plans: launch.PlanCache[NormPlan] = launch.PlanCache()


def _check(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None,
           out: torch.Tensor | None, residual_out: torch.Tensor | None) -> NormPlan:
    tensors = (x, weight) if residual is None else (x, weight, residual)
    launch.check_device(_rms_norm_kernel, *tensors)
    hidden_size = x.shape[-1]
    launch.check_shape("weight", weight, (hidden_size,))
    launch.check_float("x", x)
    launch.check_float("weight", weight)
    if residual is not None:
        launch.check_shape("residual", residual, tuple(x.shape))
        if residual.dtype != x.dtype:
            raise TypeError(f"residual {residual.dtype} must match x {x.dtype}")
    x2 = x.reshape(-1, hidden_size)  # what the launch will pass
    r2 = x2 if residual is None else residual.reshape(-1, hidden_size)
    for name, t in (("x", x2), ("residual", r2)):
        launch.check_last_contiguous(name, t)
    out_dtype = torch.promote_types(weight.dtype, x.dtype)
    if out is not None:
        launch.check_output("out", out, x, out_dtype)
    if residual is not None and residual_out is not None:
        launch.check_output("residual_out", residual_out, x)
    for name, output in (("out", out), ("residual_out", residual_out)):
        if output is not None and not output.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    config = rms_norm_config(hidden_size, residual is not None)
    num_rows = x2.shape[0]
    # outputs are contiguous (checked, or allocated so), rows hidden_size apart; without
    # a residual the kernel writes no residual_out and x stands in for it
    residual_out_stride = x2.stride(0) if residual is None else hidden_size
    return NormPlan(
        config, out_dtype, grid=(launch.cdiv(num_rows, config.constexprs["ROWS"]),),
        num_rows=num_rows, reshape=not (_is_view(x, x2) and _is_view(residual, r2)),
        strides=(x2.stride(0), r2.stride(0), hidden_size, residual_out_stride),
    )


def _is_view(t: torch.Tensor | None, rows: torch.Tensor) -> bool:
    return t is None or rows.data_ptr() == t.data_ptr()


def rms_norm(
    x: torch.Tensor,  # [..., H]
    weight: torch.Tensor,  # [H]
    eps: float,
    residual: torch.Tensor | None = None,  # [..., H]
    out: torch.Tensor | None = None,  # [..., H] for normed (else allocated)
    residual_out: torch.Tensor | None = None,  # [..., H] for x + residual (else allocated)
) -> tuple[torch.Tensor, torch.Tensor]:  # (normed, new_residual: x without a residual)
    plan = _plans.get(launch.signature(x, weight, residual, out, residual_out),
                      lambda: _check(x, weight, residual, out, residual_out))
    if out is None:
        out = torch.empty(x.shape, dtype=plan.out_dtype, device=x.device)
    if residual is None:
        residual_out = x  # the kernel writes no residual
    elif residual_out is None:
        residual_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if plan.num_rows > 0:
        # rows are read through the plan's strides: x itself where it is a view of its
        # rows (the plan checked), else the reshaped copy
        hidden_size = x.shape[-1]
        x_rows = x.reshape(-1, hidden_size) if plan.reshape else x
        r_rows, r_out = x_rows, x_rows  # no residual: neither is read or written
        if residual is not None:
            r_rows = residual.reshape(-1, hidden_size) if plan.reshape else residual
            r_out = residual_out
        _rms_norm_kernel[plan.grid](
            x_rows, r_rows, weight.contiguous(), out, r_out,
            *plan.strides, plan.num_rows, hidden_size, eps,
            **plan.config.launch_kwargs,
        )
    return out, residual_out
