"""Paged decode attention: split-K flash-decoding with a log-sum-exp merge (GQA).

One program per (sequence, kv head, split) holds the whole query-head group of that kv
head, so each K/V row is read once per kv head whatever the GQA ratio. A split covers a
fixed range of token positions; it writes its normalised partial output and log2-sum-exp,
and a second small kernel merges the splits. With one split the first kernel writes the
output directly. Tokens are gathered through the block table, so any page size works.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from binbaton.kernels import launch

BLOCK_N = 64  # tokens per tile
MIN_SPLIT_TOKENS = 256  # a split shorter than this costs more to merge than it saves
MAX_SPLITS = 64
LOG2_E = 1.4426950408889634


@triton.jit
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, out_ptr, lse_ptr,
    scale_log2,
    stride_qb, stride_qh,
    stride_kn, stride_kb, stride_kh,
    stride_vn, stride_vb, stride_vh,
    stride_tb,
    stride_ob, stride_oh, stride_os,
    stride_lb, stride_lh,
    tokens_per_split,
    PAGE_SIZE: tl.constexpr,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    WRITE_LSE: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    start = split * tokens_per_split
    end = tl.minimum(start + tokens_per_split, seq_len)

    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_PAD)
    g_mask = g < GROUP
    d_mask = d < HEAD_DIM
    heads = kv_head * GROUP + g  # [G] query heads of this kv head
    q = tl.load(
        q_ptr + seq * stride_qb + heads[:, None] * stride_qh + d[None, :],
        mask=g_mask[:, None] & d_mask[None, :], other=0.0,
    ).to(DOT_DTYPE)  # [G, D]

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_PAD], tl.float32)
    table = block_tables_ptr + seq * stride_tb
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < end
        page = tl.load(table + n // PAGE_SIZE, mask=n_mask, other=0).to(tl.int64)
        offset = n % PAGE_SIZE
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k_rows = page * stride_kn + offset * stride_kb + kv_head * stride_kh  # [N]
        k = tl.load(k_cache_ptr + k_rows[:, None] + d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k.to(DOT_DTYPE)), input_precision=PRECISION) * scale_log2
        s = tl.where(n_mask[None, :], s, float("-inf"))  # [G, N], log2 units
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_rows = page * stride_vn + offset * stride_vb + kv_head * stride_vh
        v = tl.load(v_cache_ptr + v_rows[:, None] + d[None, :], mask=kv_mask, other=0.0)
        pv = tl.dot(p.to(DOT_DTYPE), v.to(DOT_DTYPE), input_precision=PRECISION)  # [G, D]
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    has_tokens = l_i > 0.0  # False only for a split past the sequence's end
    out = acc / tl.where(has_tokens, l_i, 1.0)[:, None]
    out_ptrs = out_ptr + seq * stride_ob + heads[:, None] * stride_oh + split * stride_os
    tl.store(out_ptrs + d[None, :], out, mask=g_mask[:, None] & d_mask[None, :])
    if WRITE_LSE:
        lse = tl.where(has_tokens, m_i + tl.log2(tl.where(has_tokens, l_i, 1.0)), float("-inf"))
        tl.store(lse_ptr + seq * stride_lb + heads * stride_lh + split, lse, mask=g_mask)


@triton.jit
def _decode_merge_kernel(
    part_ptr, lse_ptr, out_ptr,
    stride_pb, stride_ph, stride_ps,
    stride_lb, stride_lh,
    stride_ob, stride_oh,
    num_splits,
    SPLIT_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    s = tl.arange(0, SPLIT_PAD)
    d = tl.arange(0, HEAD_PAD)
    s_mask = s < num_splits
    lse = tl.load(lse_ptr + seq * stride_lb + head * stride_lh + s, mask=s_mask,
                  other=float("-inf"))  # [S], log2 units; split 0 is never empty
    weight = tl.exp2(lse - tl.max(lse, 0))  # [S]
    parts = tl.load(
        part_ptr + seq * stride_pb + head * stride_ph + s[:, None] * stride_ps + d[None, :],
        mask=s_mask[:, None] & (d < HEAD_DIM)[None, :], other=0.0,
    )  # [S, D]
    out = tl.sum(weight[:, None] * parts, 0) / tl.sum(weight, 0)
    tl.store(out_ptr + seq * stride_ob + head * stride_oh + d, out, mask=d < HEAD_DIM)


def pick_num_splits(batch: int, num_kv_heads: int, max_seq_len: int, sm_count: int) -> int:
    """Split the context only while batch x kv heads leaves SMs idle and splits stay long."""
    programs = batch * num_kv_heads
    if programs >= sm_count:
        return 1
    wanted = -(-2 * sm_count // programs)  # about two waves of programs
    longest = -(-max_seq_len // MIN_SPLIT_TOKENS)
    return max(1, min(wanted, longest, MAX_SPLITS))


def decode_attention(
    query: torch.Tensor,  # [B, Hq, D], one new token per sequence
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    seq_lens: torch.Tensor,  # [B] int32, >= 1, tokens in cache incl. the new one
    scale: float,
    max_seq_len: int | None = None,  # max(seq_lens) if known (saves a device sync)
    num_splits: int | None = None,  # None: pick from batch x heads vs SM count
    out: torch.Tensor | None = None,  # [B, Hq, D] to write into (else allocated)
) -> torch.Tensor:  # [B, Hq, D]
    batch, num_q_heads, head_dim = query.shape
    _, page_size, num_kv_heads, cache_dim = k_cache.shape
    launch.check_device(_decode_split_kernel, query, k_cache, v_cache, block_tables, seq_lens)
    launch.check_float("query", query)
    if k_cache.dtype != v_cache.dtype:
        raise TypeError(f"k_cache {k_cache.dtype} and v_cache {v_cache.dtype} differ")
    launch.check_float("k_cache", k_cache)
    launch.check_shape("v_cache", v_cache, tuple(k_cache.shape))
    if cache_dim != head_dim or num_q_heads % num_kv_heads:
        raise ValueError(
            f"query [B, {num_q_heads}, {head_dim}] does not fit cache heads {num_kv_heads} "
            f"x dim {cache_dim}"
        )
    launch.check_index("block_tables", block_tables)
    launch.check_index("seq_lens", seq_lens)
    if block_tables.dim() != 2 or block_tables.shape[0] != batch:
        raise ValueError(f"block_tables {tuple(block_tables.shape)} must be [{batch}, blocks]")
    launch.check_shape("seq_lens", seq_lens, (batch,))
    for name, t in (("query", query), ("k_cache", k_cache), ("v_cache", v_cache),
                    ("block_tables", block_tables)):
        launch.check_last_contiguous(name, t)
    seq_lens = seq_lens.to(torch.int32).contiguous()  # one loop-bound type in the kernel
    if out is None:
        out = torch.empty_like(query)
    launch.check_output("out", out, query)
    if batch == 0:
        return out
    if max_seq_len is None:
        max_seq_len = int(seq_lens.max())
    if max_seq_len > block_tables.shape[1] * page_size:
        raise ValueError(f"seq_lens up to {max_seq_len} exceed the block table's capacity")
    if num_splits is None:
        num_splits = pick_num_splits(batch, num_kv_heads, max_seq_len,
                                     launch.sm_count(query.device))
    tokens_per_split = -(-max(max_seq_len, 1) // num_splits)
    tokens_per_split = -(-tokens_per_split // BLOCK_N) * BLOCK_N
    num_splits = max(1, -(-max_seq_len // tokens_per_split))

    group = num_q_heads // num_kv_heads
    dot_dtype, precision = launch.dot_dtype(_decode_split_kernel, query.dtype)
    if num_splits == 1:
        partial, lse = out.unsqueeze(2), out  # written directly; lse unused
    else:
        partial = torch.empty(batch, num_q_heads, num_splits, head_dim,
                              dtype=torch.float32, device=query.device)
        lse = torch.empty(batch, num_q_heads, num_splits, dtype=torch.float32,
                          device=query.device)
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        query, k_cache, v_cache, block_tables, seq_lens, partial, lse,
        scale * LOG2_E,
        query.stride(0), query.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        partial.stride(0), partial.stride(1), partial.stride(2),
        lse.stride(0), lse.stride(1),
        tokens_per_split,
        PAGE_SIZE=page_size,
        GROUP=group, GROUP_PAD=launch.pad(group, 16),
        HEAD_DIM=head_dim, HEAD_PAD=launch.pad(head_dim, 16),
        BLOCK_N=BLOCK_N,
        DOT_DTYPE=dot_dtype, PRECISION=precision,
        WRITE_LSE=num_splits > 1,
        num_warps=4,
    )
    if num_splits > 1:
        _decode_merge_kernel[(batch, num_q_heads)](
            partial, lse, out,
            partial.stride(0), partial.stride(1), partial.stride(2),
            lse.stride(0), lse.stride(1),
            out.stride(0), out.stride(1),
            num_splits,
            SPLIT_PAD=launch.pad(num_splits, 2), HEAD_DIM=head_dim,
            HEAD_PAD=launch.pad(head_dim, 16),
            num_warps=4,
        )
    return out


def bytes_moved(query: torch.Tensor, k_cache: torch.Tensor, seq_lens: torch.Tensor) -> int:
    """Bytes decode attention must move: each sequence's K and V rows, q in, out back."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    kv_rows = int(seq_lens.sum()) * num_kv_heads * head_dim * 2
    return kv_rows * k_cache.element_size() + 2 * query.numel() * query.element_size()
