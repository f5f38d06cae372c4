"""Variable-length causal prefill attention over packed sequences (flash attention, GQA).

Sequences are packed back to back (``cu_seqlens`` holds the prefix sums of their lengths).
One program per (query tile, sequence, query head) streams its sequence's keys up to the
tile's last row with an online softmax; tiles past a sequence's end exit at once. Query
head h reads kv head h // group.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from binbaton.kernels import launch

LOG2_E = 1.4426950408889634


@triton.jit
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, cu_seqlens_ptr,
    scale_log2,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    GROUP: tl.constexpr,
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
        kv_head = head // GROUP
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


def pick_blocks(head_pad: int, dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N): tiles that keep q, k, v and acc within registers/shared memory."""
    wide = head_pad > 128 or (dtype == torch.float32 and head_pad > 64)
    return (64, 32) if wide else (64, 64)


def prefill_attention(
    query: torch.Tensor,  # [T, Hq, D], all newcomers' prompt tokens packed
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    cu_seqlens: torch.Tensor,  # [B + 1] int32, prefix sums of prompt lengths
    scale: float,
    max_seqlen: int | None = None,  # longest prompt if known (saves a device sync)
    out: torch.Tensor | None = None,  # [T, Hq, D] to write into (else allocated)
) -> torch.Tensor:  # [T, Hq, D]
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
    cu_seqlens = cu_seqlens.contiguous()
    if out is None:
        out = torch.empty_like(query)
    launch.check_output("out", out, query)
    batch = cu_seqlens.numel() - 1
    if batch == 0 or num_tokens == 0:
        return out
    if max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    head_pad = launch.pad(head_dim, 16)
    block_m, block_n = pick_blocks(head_pad, query.dtype)
    dot_dtype, precision = launch.dot_dtype(_prefill_kernel, query.dtype)
    _prefill_kernel[(triton.cdiv(max_seqlen, block_m), batch, num_q_heads)](
        query, key, value, out, cu_seqlens,
        scale * LOG2_E,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1),
        value.stride(0), value.stride(1), out.stride(0), out.stride(1),
        GROUP=num_q_heads // num_kv_heads,
        HEAD_DIM=head_dim, HEAD_PAD=head_pad,
        BLOCK_M=block_m, BLOCK_N=block_n,
        DOT_DTYPE=dot_dtype, PRECISION=precision,
        num_warps=4,
    )
    return out
