"""KV insertion: write tokens' K/V rows into their paged-cache slots.

``store_kv`` serves both prefill insertion (a newcomer's whole prompt) and the decode
append (one token per sequence). ``rope_store_kv`` also applies rotary embedding
("rotate_half" form, Llama/Mistral/Qwen) to the query and key on the way, in place, so the
key is read once for rotation and caching instead of three passes. One program per token
moves all its heads; a negative slot marks a padding token and is skipped.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from binbaton.kernels import launch


@triton.jit
def _store_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcn, stride_kcb, stride_kch,
    stride_vcn, stride_vcb, stride_vch,
    NUM_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, PAGE_SIZE: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(slots_ptr + token).to(tl.int64)
    if slot >= 0:
        h = tl.arange(0, HEADS_PAD)
        d = tl.arange(0, HEAD_PAD)
        mask = (h < NUM_HEADS)[:, None] & (d < HEAD_DIM)[None, :]
        block = slot // PAGE_SIZE
        offset = slot % PAGE_SIZE
        k = tl.load(key_ptr + token * stride_kt + h[:, None] * stride_kh + d[None, :], mask=mask)
        v = tl.load(value_ptr + token * stride_vt + h[:, None] * stride_vh + d[None, :],
                    mask=mask)
        k_dst = k_cache_ptr + block * stride_kcn + offset * stride_kcb + h[:, None] * stride_kch
        v_dst = v_cache_ptr + block * stride_vcn + offset * stride_vcb + h[:, None] * stride_vch
        tl.store(k_dst + d[None, :], k, mask=mask)
        tl.store(v_dst + d[None, :], v, mask=mask)


@triton.jit
def _rotate(x1, x2, c1, s1, c2, s2):
    """rotate_half rope on the two halves: x * cos + rotate_half(x) * sin, in float32."""
    return x1 * c1 - x2 * s1, x2 * c2 + x1 * s2


@triton.jit
def _rope_store_kv_kernel(
    query_ptr, key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slots_ptr, positions_ptr,
    cos_ptr, sin_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcn, stride_kcb, stride_kch,
    stride_vcn, stride_vcb, stride_vch,
    stride_cos, stride_sin,
    NUM_Q_HEADS: tl.constexpr, Q_HEADS_PAD: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr, KV_HEADS_PAD: tl.constexpr,
    HALF_DIM: tl.constexpr, HALF_PAD: tl.constexpr, PAGE_SIZE: tl.constexpr,
):
    token = tl.program_id(0)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    d = tl.arange(0, HALF_PAD)
    d_mask = d < HALF_DIM
    c1 = tl.load(cos_ptr + pos * stride_cos + d, mask=d_mask).to(tl.float32)[None, :]
    c2 = tl.load(cos_ptr + pos * stride_cos + HALF_DIM + d, mask=d_mask).to(tl.float32)[None, :]
    s1 = tl.load(sin_ptr + pos * stride_sin + d, mask=d_mask).to(tl.float32)[None, :]
    s2 = tl.load(sin_ptr + pos * stride_sin + HALF_DIM + d, mask=d_mask).to(tl.float32)[None, :]

    hq = tl.arange(0, Q_HEADS_PAD)
    q_mask = (hq < NUM_Q_HEADS)[:, None] & d_mask[None, :]
    q_ptrs = query_ptr + token * stride_qt + hq[:, None] * stride_qh + d[None, :]
    q1, q2 = _rotate(tl.load(q_ptrs, mask=q_mask).to(tl.float32),
                     tl.load(q_ptrs + HALF_DIM, mask=q_mask).to(tl.float32), c1, s1, c2, s2)
    tl.store(q_ptrs, q1, mask=q_mask)
    tl.store(q_ptrs + HALF_DIM, q2, mask=q_mask)

    hk = tl.arange(0, KV_HEADS_PAD)
    kv_mask = (hk < NUM_KV_HEADS)[:, None] & d_mask[None, :]
    k_ptrs = key_ptr + token * stride_kt + hk[:, None] * stride_kh + d[None, :]
    k1, k2 = _rotate(tl.load(k_ptrs, mask=kv_mask).to(tl.float32),
                     tl.load(k_ptrs + HALF_DIM, mask=kv_mask).to(tl.float32), c1, s1, c2, s2)
    k1 = k1.to(key_ptr.dtype.element_ty)  # the cache holds exactly what the key holds
    k2 = k2.to(key_ptr.dtype.element_ty)
    tl.store(k_ptrs, k1, mask=kv_mask)
    tl.store(k_ptrs + HALF_DIM, k2, mask=kv_mask)

    slot = tl.load(slots_ptr + token).to(tl.int64)
    if slot >= 0:
        block = slot // PAGE_SIZE
        offset = slot % PAGE_SIZE
        k_dst = (k_cache_ptr + block * stride_kcn + offset * stride_kcb
                 + hk[:, None] * stride_kch + d[None, :])
        tl.store(k_dst, k1, mask=kv_mask)
        tl.store(k_dst + HALF_DIM, k2, mask=kv_mask)
        v_ptrs = value_ptr + token * stride_vt + hk[:, None] * stride_vh + d[None, :]
        v_dst = (v_cache_ptr + block * stride_vcn + offset * stride_vcb
                 + hk[:, None] * stride_vch + d[None, :])
        tl.store(v_dst, tl.load(v_ptrs, mask=kv_mask), mask=kv_mask)
        tl.store(v_dst + HALF_DIM, tl.load(v_ptrs + HALF_DIM, mask=kv_mask), mask=kv_mask)


def _check_cache(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    num_tokens, num_heads, head_dim = key.shape
    launch.check_shape("value", value, (num_tokens, num_heads, head_dim))
    if k_cache.dim() != 4 or tuple(k_cache.shape[2:]) != (num_heads, head_dim):
        raise ValueError(
            f"k_cache {tuple(k_cache.shape)} must be [N, block_size, {num_heads}, {head_dim}]"
        )
    launch.check_shape("v_cache", v_cache, tuple(k_cache.shape))
    launch.check_shape("slot_mapping", slot_mapping, (num_tokens,))
    launch.check_index("slot_mapping", slot_mapping)
    for name, t in (("key", key), ("value", value), ("k_cache", k_cache), ("v_cache", v_cache)):
        launch.check_float(name, t)
        launch.check_last_contiguous(name, t)


def store_kv(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int32/int64, slot of each token (< 0: skip)
) -> None:
    launch.check_device(_store_kv_kernel, key, value, k_cache, v_cache, slot_mapping)
    _check_cache(key, value, k_cache, v_cache, slot_mapping)
    num_tokens, num_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    _store_kv_kernel[(num_tokens,)](
        key, value, k_cache, v_cache, slot_mapping.contiguous(),
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        NUM_HEADS=num_heads, HEADS_PAD=launch.pad(num_heads),
        HEAD_DIM=head_dim, HEAD_PAD=launch.pad(head_dim), PAGE_SIZE=k_cache.shape[1],
        num_warps=4,
    )


def rope_store_kv(
    query: torch.Tensor,  # [T, Hq, D], rotated in place
    key: torch.Tensor,  # [T, Hkv, D], rotated in place
    value: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int32/int64 (< 0: rotate but do not store)
    positions: torch.Tensor,  # [T] int32/int64, each token's position in its sequence
    cos: torch.Tensor,  # [max_pos, D], Hugging Face layout (both halves)
    sin: torch.Tensor,  # [max_pos, D]
) -> None:
    launch.check_device(_rope_store_kv_kernel, query, key, value, k_cache, v_cache,
                        slot_mapping, positions, cos, sin)
    _check_cache(key, value, k_cache, v_cache, slot_mapping)
    num_tokens, num_kv_heads, head_dim = key.shape
    if query.dim() != 3 or query.shape[0] != num_tokens or query.shape[2] != head_dim:
        raise ValueError(f"query {tuple(query.shape)} must be [{num_tokens}, Hq, {head_dim}]")
    if head_dim % 2:
        raise ValueError(f"rotary embedding needs an even head size, got {head_dim}")
    launch.check_float("query", query)
    launch.check_last_contiguous("query", query)
    launch.check_shape("positions", positions, (num_tokens,))
    launch.check_index("positions", positions)
    for name, table in (("cos", cos), ("sin", sin)):
        if table.dim() != 2 or table.shape[1] != head_dim:
            raise ValueError(f"{name} {tuple(table.shape)} must be [max_pos, {head_dim}]")
        launch.check_float(name, table)
        launch.check_last_contiguous(name, table)
    if num_tokens == 0:
        return
    num_q_heads, half = query.shape[1], head_dim // 2
    _rope_store_kv_kernel[(num_tokens,)](
        query, key, value, k_cache, v_cache, slot_mapping.contiguous(), positions.contiguous(),
        cos, sin,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1),
        value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        cos.stride(0), sin.stride(0),
        NUM_Q_HEADS=num_q_heads, Q_HEADS_PAD=launch.pad(num_q_heads),
        NUM_KV_HEADS=num_kv_heads, KV_HEADS_PAD=launch.pad(num_kv_heads),
        HALF_DIM=half, HALF_PAD=launch.pad(half), PAGE_SIZE=k_cache.shape[1],
        num_warps=4,
    )
