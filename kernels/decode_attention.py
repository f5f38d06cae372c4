"""Paged decode attention: split-K flash-decoding with a log-sum-exp merge (GQA).

One program per (sequence, kv head, split) holds the whole query-head group of that kv
head, so each K/V row is read once per kv head whatever the GQA ratio. A split covers a
fixed range of token positions; it writes its normalised partial output and log2-sum-exp,
and a second small kernel merges the splits. With one split the first kernel writes the
output directly. Tokens are gathered through the block table, so any page size works.

Compile-time parameters are the model's (head size, page size, dtype) and the tiles of
``decode_tiles``; batch, lengths, GQA group, split count and block-table width are
runtime values, so one engine run compiles one split kernel per output kind (direct or
partial) and one merge kernel.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl
from binbaton.kernels import launch

MIN_SPLIT_TOKENS = 256  # a split shorter than this costs more to merge than it saves
MAX_SPLITS = 64
LOG2_E = 1.4426950408889634


@triton.jit(do_not_specialize=["group", "stride_tb", "tokens_per_split"])
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, out_ptr, lse_ptr,
    scale_log2,
    stride_qb, stride_qh,
    stride_kn, stride_kb, stride_kh,
    stride_vn, stride_vb, stride_vh,
    stride_tb,
    stride_ob, stride_oh, stride_os,
    stride_lb, stride_lh,
    group, tokens_per_split,
    PAGE_SIZE: tl.constexpr,
    GROUP_PAD: tl.constexpr,
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
    g_mask = g < group
    d_mask = d < HEAD_DIM
    heads = kv_head * group + g  # [G] query heads of this kv head
    q = tl.load(
        q_ptr + seq * stride_qb + heads[:, None] * stride_qh + d[None, :],
        mask=g_mask[:, None] & d_mask[None, :], other=0.0,
    ).to(DOT_DTYPE)  # [G, D]

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_PAD], tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * stride_tb
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


@triton.jit(do_not_specialize=["num_splits"])
def _decode_merge_kernel(
    part_ptr, lse_ptr, out_ptr,
    stride_pb, stride_ph, stride_ps,
    stride_lb, stride_lh,
    stride_ob, stride_oh,
    num_splits,
    MAX_SPLITS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    s = tl.arange(0, MAX_SPLITS_PAD)
    d = tl.arange(0, HEAD_PAD)
    d_mask = d < HEAD_DIM
    lse_row = lse_ptr + seq * stride_lb + head * stride_lh
    part_row = part_ptr + seq * stride_pb + head * stride_ph
    # [S] log2 units; split 0 is never empty, so the maximum is finite
    lse_max = tl.max(tl.load(lse_row + s, mask=s < num_splits, other=float("-inf")), 0)
    acc = tl.zeros([HEAD_PAD], tl.float32)
    total = 0.0
    for split in range(num_splits):
        weight = tl.exp2(tl.load(lse_row + split) - lse_max)  # 0 for an empty split
        acc += weight * tl.load(part_row + split * stride_ps + d, mask=d_mask, other=0.0)
        total += weight
    tl.store(out_ptr + seq * stride_ob + head * stride_oh + d, acc / total, mask=d_mask)


# ------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class Tiles:
    block_n: int  # tokens per tile
    num_warps: int
    num_stages: int


def decode_tiles(head_pad: int, dtype: torch.dtype, capability: launch.Capability) -> Tiles:
    """Tiles of the split kernel with no register spill and shared memory well within
    every 8.x and 9.0 part (at most 82 KB; tests/unit/test_kernels_aot.py compiles them
    for sm_80 and sm_90). The same table serves both: decode is bound by reading K/V.

    A program's tile is [16 query heads, BLOCK_N tokens] against [BLOCK_N, head]. float32
    runs its products on CUDA cores with the operands in registers, so past head 64 it
    takes half the tokens per tile over twice the warps."""
    if dtype == torch.float32 and head_pad > 64:
        return Tiles(32, num_warps=8, num_stages=2)
    return Tiles(64, num_warps=4 if head_pad <= 128 else 8, num_stages=2)


@functools.cache
def split_config(page_size: int, group: int, head_dim: int, dtype: torch.dtype,
                 capability: launch.Capability, interpreted: bool,
                 write_lse: bool) -> launch.KernelConfig:
    """The split kernel's compile-time parameters (``write_lse``: more than one split)."""
    head_pad = launch.pad(head_dim, 16)
    tiles = decode_tiles(head_pad, dtype, capability)
    dot, precision = launch.dot_dtype(interpreted, dtype)
    return launch.KernelConfig(
        dict(PAGE_SIZE=page_size, GROUP_PAD=launch.pad(group, 16), HEAD_DIM=head_dim,
             HEAD_PAD=head_pad, BLOCK_N=tiles.block_n, DOT_DTYPE=dot, PRECISION=precision,
             WRITE_LSE=write_lse),
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )


@functools.cache
def merge_config(head_dim: int) -> launch.KernelConfig:
    return launch.KernelConfig(
        dict(MAX_SPLITS_PAD=launch.pad(MAX_SPLITS), HEAD_DIM=head_dim,
             HEAD_PAD=launch.pad(head_dim, 16)),
        num_warps=4, num_stages=1,
    )


def pick_num_splits(batch: int, num_kv_heads: int, max_seq_len: int, sm_count: int) -> int:
    """Split the context only while batch x kv heads leaves SMs idle and splits stay long."""
    programs = batch * num_kv_heads
    if programs >= sm_count:
        return 1
    wanted = -(-2 * sm_count // programs)  # about two waves of programs
    longest = -(-max_seq_len // MIN_SPLIT_TOKENS)
    return max(1, min(wanted, longest, MAX_SPLITS))


# ------------------------------------------------------------------------ launcher


@dataclass(frozen=True)
class DecodePlan:
    """What one argument signature fixes: checked once, reused while it repeats."""

    group: int
    capacity: int  # tokens the block table can address
    sm_count: int
    seq_lens_ready: bool  # int32 and contiguous: passed as it is
    input_strides: tuple[int, ...]  # query (2), k_cache (3), v_cache (3), block_tables (1)
    out_strides: tuple[int, int]  # of out, or of the empty_like(query) it will be
    direct: launch.KernelConfig  # one split: the output is written directly
    partial: launch.KernelConfig  # several splits: partial outputs, then the merge
    merge: launch.KernelConfig
    # Splits by (max_seq_len, num_splits asked for): the engine passes both, fixed per
    # batch bucket, so a decode step's geometry is one lookup
    splits: dict[tuple[int, int | None], Splits] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Splits:
    """A launch's split geometry: how the context is cut, and where partials go."""

    num_splits: int
    tokens_per_split: int
    config: launch.KernelConfig
    partial_strides: tuple[int, int, int]  # of the partial outputs (out's with one split)
    lse_strides: tuple[int, int]


_plans: launch.PlanCache[DecodePlan] = launch.PlanCache()


def _check(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
           block_tables: torch.Tensor, seq_lens: torch.Tensor,
           out: torch.Tensor | None) -> DecodePlan:
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
    if out is not None:
        launch.check_output("out", out, query)
    group = num_q_heads // num_kv_heads
    config = functools.partial(split_config, page_size, group, head_dim, query.dtype,
                               launch.capability(query.device),
                               launch.is_interpreted(_decode_split_kernel))
    like = out if out is not None else torch.empty_like(query, device="meta")
    return DecodePlan(
        group=group, capacity=block_tables.shape[1] * page_size,
        sm_count=launch.sm_count(query.device),
        seq_lens_ready=seq_lens.dtype == torch.int32 and seq_lens.stride(0) == 1,
        input_strides=(*query.stride()[:2], *k_cache.stride()[:3], *v_cache.stride()[:3],
                       block_tables.stride(0)),
        out_strides=(like.stride(0), like.stride(1)),
        direct=config(write_lse=False), partial=config(write_lse=True),
        merge=merge_config(head_dim),
    )


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
    plan = _plans.get(
        launch.signature(query, k_cache, v_cache, block_tables, seq_lens, out),
        lambda: _check(query, k_cache, v_cache, block_tables, seq_lens, out),
    )
    if not plan.seq_lens_ready:
        seq_lens = seq_lens.to(torch.int32).contiguous()  # one loop-bound type in the kernel
    if out is None:
        out = torch.empty_like(query)
    batch, num_q_heads, head_dim = query.shape
    if batch == 0:
        return out
    if max_seq_len is None:
        max_seq_len = int(seq_lens.max())
    splits = plan.splits.get((max_seq_len, num_splits))
    if splits is None:
        splits = _plan_splits(plan, query, k_cache.shape[2], max_seq_len, num_splits)
        if len(plan.splits) >= SPLITS_LIMIT:
            plan.splits.clear()
        plan.splits[(max_seq_len, num_splits)] = splits

    partial, lse = out, out  # one split: written directly, the split stride and lse unused
    if splits.num_splits > 1:
        partial = torch.empty(batch, num_q_heads, splits.num_splits, head_dim,
                              dtype=torch.float32, device=query.device)
        lse = torch.empty(batch, num_q_heads, splits.num_splits, dtype=torch.float32,
                          device=query.device)
    _decode_split_kernel[(batch, k_cache.shape[2], splits.num_splits)](
        query, k_cache, v_cache, block_tables, seq_lens, partial, lse,
        scale * LOG2_E, *plan.input_strides, *splits.partial_strides, *splits.lse_strides,
        plan.group, splits.tokens_per_split,
        **splits.config.launch_kwargs,
    )
    if splits.num_splits > 1:
        _decode_merge_kernel[(batch, num_q_heads)](
            partial, lse, out, *splits.partial_strides, *splits.lse_strides,
            *plan.out_strides, splits.num_splits,
            **plan.merge.launch_kwargs,
        )
    return out


SPLITS_LIMIT = 4096  # geometries kept per plan (max_seq_len varies when not passed)


def _plan_splits(plan: DecodePlan, query: torch.Tensor, num_kv_heads: int,
                 max_seq_len: int, num_splits: int | None) -> Splits:
    """Checks max_seq_len against the table and cuts the context into whole tiles."""
    if max_seq_len > plan.capacity:
        raise ValueError(f"seq_lens up to {max_seq_len} exceed the block table's capacity")
    batch, num_q_heads, head_dim = query.shape
    if num_splits is None:
        num_splits = pick_num_splits(batch, num_kv_heads, max_seq_len, plan.sm_count)
    block_n = plan.partial.constexprs["BLOCK_N"]
    tokens_per_split = -(-max(max_seq_len, 1) // num_splits)
    tokens_per_split = -(-tokens_per_split // block_n) * block_n
    num_splits = max(1, -(-max_seq_len // tokens_per_split))
    if num_splits == 1:
        out_b, out_h = plan.out_strides
        return Splits(1, tokens_per_split, plan.direct, partial_strides=(out_b, out_h, 0),
                      lse_strides=(out_b, out_h))
    return Splits(
        num_splits, tokens_per_split, plan.partial,
        partial_strides=(num_q_heads * num_splits * head_dim, num_splits * head_dim, head_dim),
        lse_strides=(num_q_heads * num_splits, num_splits),
    )


def bytes_moved(query: torch.Tensor, k_cache: torch.Tensor, seq_lens: torch.Tensor) -> int:
    """Bytes decode attention must move: each sequence's K and V rows, q in, out back."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    kv_rows = int(seq_lens.sum()) * num_kv_heads * head_dim * 2
    return kv_rows * k_cache.element_size() + 2 * query.numel() * query.element_size()
