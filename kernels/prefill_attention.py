"""Variable-length causal prefill attention over packed sequences (flash attention, GQA).

Sequences are packed back to back (``cu_seqlens`` holds the prefix sums of their lengths).
One program per (query tile, sequence, query head) streams its sequence's keys up to the
tile's last row with an online softmax; tiles past a sequence's end exit at once. Query
head h reads kv head h // group. Compile-time parameters are the head size, dtype and the
tiles of ``prefill_tiles``; lengths and the GQA group are runtime values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from binbaton.kernels import launch

LOG2_E = 1.4426950408889634


@triton.jit(do_not_specialize=["group"])
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, cu_seqlens_ptr,
    scale_log2,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    group,
    HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    start = tl.load(cu_seqlens_ptr + seq).to(tl.int64)
    seq_len = (tl.load(cu_seqlens_ptr + seq + 1) - start).to(tl.int32)
    m0 = tile * BLOCK_M
    if m0 < seq_len:
        kv_head = head // group
        m = m0 + tl.arange(0, BLOCK_M)  # [M] positions in the sequence
        d = tl.arange(0, HEAD_PAD)
        m_mask = m < seq_len
        d_mask = d < HEAD_DIM
        q_ptrs = q_ptr + (start + m)[:, None] * stride_qt + head * stride_qh + d[None, :]
        q = tl.load(q_ptrs, mask=m_mask[:, None] & d_mask[None, :], other=0.0).to(DOT_DTYPE)

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_PAD], tl.float32)
        end = tl.minimum(m0 + BLOCK_M, seq_len)  # causal: no key after the tile's last row
        for n0 in range(0, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            n_mask = n < end
            kv_mask = n_mask[:, None] & d_mask[None, :]
            rows = (start + n)[:, None]
            k = tl.load(k_ptr + rows * stride_kt + kv_head * stride_kh + d[None, :],
                        mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k.to(DOT_DTYPE)), input_precision=PRECISION) * scale_log2
            visible = (n[None, :] <= m[:, None]) & n_mask[None, :]
            s = tl.where(visible, s, float("-inf"))  # [M, N]; each valid row sees key 0
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_ptr + rows * stride_vt + kv_head * stride_vh + d[None, :],
                        mask=kv_mask, other=0.0)
            pv = tl.dot(p.to(DOT_DTYPE), v.to(DOT_DTYPE), input_precision=PRECISION)
            acc = acc * alpha[:, None] + pv
            m_i = m_new

        out = acc / tl.where(m_mask, l_i, 1.0)[:, None]
        o_ptrs = out_ptr + (start + m)[:, None] * stride_ot + head * stride_oh + d[None, :]
        tl.store(o_ptrs, out, mask=m_mask[:, None] & d_mask[None, :])


@dataclass(frozen=True)
class Tiles:
    block_m: int  # query rows per program
    block_n: int  # keys per step
    num_warps: int
    num_stages: int


HOPPER = (9, 0)


def prefill_tiles(head_pad: int, dtype: torch.dtype, capability: launch.Capability) -> Tiles:
    """Tiles with no register spill and shared memory within the arch's limit (compiled
    for sm_80 and sm_90 by tests/unit/test_kernels_aot.py); the sm_80 tiles stay under
    the 99 KB of the other 8.x parts.

    The [BLOCK_M, head] accumulator and query stay in registers (8 warps share them);
    sm_90 has the shared memory for wider key tiles or a third stage. float32 runs its
    products on CUDA cores with the operands in registers too, and takes smaller tiles."""
    hopper = capability >= HOPPER
    if dtype == torch.float32:
        if head_pad <= 64 or (hopper and head_pad <= 128):
            return Tiles(64, 32, num_warps=8, num_stages=2)
        if head_pad <= 128:
            return Tiles(32, 32, num_warps=8, num_stages=2)
        return Tiles(32, 32, num_warps=16, num_stages=2) if hopper else Tiles(16, 16, 8, 2)
    if head_pad <= 64:
        return Tiles(128, 64, num_warps=8, num_stages=3)
    if head_pad <= 128:
        return Tiles(128, 64 if hopper else 32, num_warps=8, num_stages=3)
    return Tiles(64, 32, num_warps=8, num_stages=3 if hopper else 2)


@functools.cache
def prefill_config(head_dim: int, dtype: torch.dtype, capability: launch.Capability,
                   interpreted: bool) -> launch.KernelConfig:
    head_pad = launch.pad(head_dim, 16)
    tiles = prefill_tiles(head_pad, dtype, capability)
    dot, precision = launch.dot_dtype(interpreted, dtype)
    return launch.KernelConfig(
        dict(HEAD_DIM=head_dim, HEAD_PAD=head_pad, BLOCK_M=tiles.block_m,
             BLOCK_N=tiles.block_n, DOT_DTYPE=dot, PRECISION=precision),
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )


@dataclass(frozen=True)
class PrefillPlan:
    group: int
    config: launch.KernelConfig


_plans: launch.PlanCache[PrefillPlan] = launch.PlanCache()


def _check(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           cu_seqlens: torch.Tensor, out: torch.Tensor | None) -> PrefillPlan:
    num_tokens, num_q_heads, head_dim = query.shape
    launch.check_device(_prefill_kernel, query, key, value, cu_seqlens)
    if key.dim() != 3 or key.shape[0] != num_tokens or key.shape[2] != head_dim:
        raise ValueError(f"key {tuple(key.shape)} must be [{num_tokens}, Hkv, {head_dim}]")
    num_kv_heads = key.shape[1]
    if num_q_heads % num_kv_heads:
        raise ValueError(f"{num_q_heads} query heads are not a multiple of {num_kv_heads}")
    launch.check_shape("value", value, tuple(key.shape))
    for name, t in (("query", query), ("key", key), ("value", value)):
        launch.check_float(name, t)
        launch.check_last_contiguous(name, t)
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise TypeError(f"query/key/value dtypes differ: {query.dtype} {key.dtype} {value.dtype}")
    launch.check_index("cu_seqlens", cu_seqlens)
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"cu_seqlens {tuple(cu_seqlens.shape)} must be [B + 1]")
    if out is not None:
        launch.check_output("out", out, query)
    config = prefill_config(head_dim, query.dtype, launch.capability(query.device),
                            launch.is_interpreted(_prefill_kernel))
    return PrefillPlan(num_q_heads // num_kv_heads, config)


def prefill_attention(
    query: torch.Tensor,  # [T, Hq, D], all newcomers' prompt tokens packed
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    cu_seqlens: torch.Tensor,  # [B + 1] int32, prefix sums of prompt lengths
    scale: float,
    max_seqlen: int | None = None,  # longest prompt if known (saves a device sync)
    out: torch.Tensor | None = None,  # [T, Hq, D] to write into (else allocated)
) -> torch.Tensor:  # [T, Hq, D]
    plan = _plans.get(launch.signature(query, key, value, cu_seqlens, out),
                      lambda: _check(query, key, value, cu_seqlens, out))
    cu_seqlens = cu_seqlens.contiguous()
    if out is None:
        out = torch.empty_like(query)
    batch = cu_seqlens.numel() - 1
    num_tokens, num_q_heads = query.shape[0], query.shape[1]
    if batch == 0 or num_tokens == 0:
        return out
    if max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    block_m = plan.config.constexprs["BLOCK_M"]
    _prefill_kernel[(launch.cdiv(max_seqlen, block_m), batch, num_q_heads)](
        query, key, value, out, cu_seqlens,
        scale * LOG2_E,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1),
        value.stride(0), value.stride(1), out.stride(0), out.stride(1),
        plan.group,
        **plan.config.launch_kwargs,
    )
    return out
