"""KV insertion: write tokens' K/V rows into their paged-cache slots.

``store_kv`` serves both prefill insertion (a newcomer's whole prompt) and the decode
append (one token per sequence). ``rope_store_kv`` also applies rotary embedding
("rotate_half" form, Llama/Mistral/Qwen) to the query and key on the way, in place, so the
key is read once for rotation and caching instead of three passes. One program per token
moves all its heads, a block of heads at a time; a negative slot marks a padding token and
is skipped. Compile-time parameters are the head size, page size and dtypes; token and
head counts are runtime values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from binbaton.kernels import launch

HEAD_ELEMENTS = 2048  # elements a program moves per step: heads per block = this / head size


@triton.jit(do_not_specialize=["num_heads"])
def _store_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcn, stride_kcb, stride_kch,
    stride_vcn, stride_vcb, stride_vch,
    num_heads,
    HEADS_BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + token).to(tl.int64)
    if slot >= 0:
        d = tl.arange(0, HEAD_PAD)[None, :]
        block = slot // PAGE_SIZE
        offset = slot % PAGE_SIZE
        key_row = key_ptr + token * stride_kt
        value_row = value_ptr + token * stride_vt
        k_dst = k_cache_ptr + block * stride_kcn + offset * stride_kcb
        v_dst = v_cache_ptr + block * stride_vcn + offset * stride_vcb
        for h0 in range(0, num_heads, HEADS_BLOCK):
            h = (h0 + tl.arange(0, HEADS_BLOCK))[:, None]  # [H, 1]
            mask = (h < num_heads) & (d < HEAD_DIM)
            k = tl.load(key_row + h * stride_kh + d, mask=mask)
            v = tl.load(value_row + h * stride_vh + d, mask=mask)
            tl.store(k_dst + h * stride_kch + d, k, mask=mask)
            tl.store(v_dst + h * stride_vch + d, v, mask=mask)


@triton.jit
def _rotate(x1, x2, c1, s1, c2, s2):
    """rotate_half rope on the two halves: x * cos + rotate_half(x) * sin, in float32."""
    return x1 * c1 - x2 * s1, x2 * c2 + x1 * s2


@triton.jit(do_not_specialize=["num_q_heads", "num_kv_heads"])
def _rope_store_kv_kernel(
    query_ptr, key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slots_ptr, positions_ptr,
    cos_ptr, sin_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcn, stride_kcb, stride_kch,
    stride_vcn, stride_vcb, stride_vch,
    stride_cos, stride_sin,
    num_q_heads, num_kv_heads,
    HEADS_BLOCK: tl.constexpr, HALF_DIM: tl.constexpr, HALF_PAD: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    d = tl.arange(0, HALF_PAD)[None, :]
    d_mask = d < HALF_DIM
    c1 = tl.load(cos_ptr + pos * stride_cos + d, mask=d_mask).to(tl.float32)  # [1, D/2]
    c2 = tl.load(cos_ptr + pos * stride_cos + HALF_DIM + d, mask=d_mask).to(tl.float32)
    s1 = tl.load(sin_ptr + pos * stride_sin + d, mask=d_mask).to(tl.float32)
    s2 = tl.load(sin_ptr + pos * stride_sin + HALF_DIM + d, mask=d_mask).to(tl.float32)

    q_row = query_ptr + token * stride_qt
    for h0 in range(0, num_q_heads, HEADS_BLOCK):
        h = (h0 + tl.arange(0, HEADS_BLOCK))[:, None]  # [H, 1]
        mask = (h < num_q_heads) & d_mask
        q_ptrs = q_row + h * stride_qh + d
        q1, q2 = _rotate(tl.load(q_ptrs, mask=mask).to(tl.float32),
                         tl.load(q_ptrs + HALF_DIM, mask=mask).to(tl.float32), c1, s1, c2, s2)
        tl.store(q_ptrs, q1, mask=mask)
        tl.store(q_ptrs + HALF_DIM, q2, mask=mask)

    slot = tl.load(slots_ptr + token).to(tl.int64)
    block = slot // PAGE_SIZE
    offset = slot % PAGE_SIZE
    k_row = key_ptr + token * stride_kt
    v_row = value_ptr + token * stride_vt
    k_dst_row = k_cache_ptr + block * stride_kcn + offset * stride_kcb
    v_dst_row = v_cache_ptr + block * stride_vcn + offset * stride_vcb
    for h0 in range(0, num_kv_heads, HEADS_BLOCK):
        h = (h0 + tl.arange(0, HEADS_BLOCK))[:, None]
        mask = (h < num_kv_heads) & d_mask
        k_ptrs = k_row + h * stride_kh + d
        k1, k2 = _rotate(tl.load(k_ptrs, mask=mask).to(tl.float32),
                         tl.load(k_ptrs + HALF_DIM, mask=mask).to(tl.float32), c1, s1, c2, s2)
        k1 = k1.to(key_ptr.dtype.element_ty)  # the cache holds exactly what the key holds
        k2 = k2.to(key_ptr.dtype.element_ty)
        tl.store(k_ptrs, k1, mask=mask)
        tl.store(k_ptrs + HALF_DIM, k2, mask=mask)
        if slot >= 0:
            k_dst = k_dst_row + h * stride_kch + d
            tl.store(k_dst, k1, mask=mask)
            tl.store(k_dst + HALF_DIM, k2, mask=mask)
            v_ptrs = v_row + h * stride_vh + d
            v_dst = v_dst_row + h * stride_vch + d
            tl.store(v_dst, tl.load(v_ptrs, mask=mask), mask=mask)
            tl.store(v_dst + HALF_DIM, tl.load(v_ptrs + HALF_DIM, mask=mask), mask=mask)


# ------------------------------------------------------------------------ configuration


@functools.cache
def store_config(head_dim: int, page_size: int) -> launch.KernelConfig:
    head_pad = launch.pad(head_dim)
    return launch.KernelConfig(
        dict(HEADS_BLOCK=max(1, HEAD_ELEMENTS // head_pad), HEAD_DIM=head_dim,
             HEAD_PAD=head_pad, PAGE_SIZE=page_size),
        num_warps=4,
    )


@functools.cache
def rope_config(head_dim: int, page_size: int) -> launch.KernelConfig:
    half_pad = launch.pad(head_dim // 2)
    return launch.KernelConfig(
        dict(HEADS_BLOCK=max(1, HEAD_ELEMENTS // (2 * half_pad)), HALF_DIM=head_dim // 2,
             HALF_PAD=half_pad, PAGE_SIZE=page_size),
        num_warps=4,
    )


# ------------------------------------------------------------------------ launchers


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


def _cache_strides(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor) -> tuple[int, ...]:
    """The kernels' stride arguments of key, value and the two caches, in their order."""
    return (*key.stride()[:2], *value.stride()[:2], *k_cache.stride()[:3],
            *v_cache.stride()[:3])


@dataclass(frozen=True)
class StorePlan:
    """What one argument signature fixes: checked once, reused while it repeats."""

    config: launch.KernelConfig
    grid: tuple[int]  # (tokens,); 0: nothing to launch
    args: tuple[int, ...]  # every argument after the tensors: strides, head counts


_store_plans: launch.PlanCache[StorePlan] = launch.PlanCache()


def _check_store(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> StorePlan:
    launch.check_device(_store_kv_kernel, key, value, k_cache, v_cache, slot_mapping)
    _check_cache(key, value, k_cache, v_cache, slot_mapping)
    return StorePlan(store_config(key.shape[2], k_cache.shape[1]), grid=(key.shape[0],),
                     args=(*_cache_strides(key, value, k_cache, v_cache), key.shape[1]))


def store_kv(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int32/int64, slot of each token (< 0: skip)
) -> None:
    plan = _store_plans.get(
        launch.signature(key, value, k_cache, v_cache, slot_mapping),
        lambda: _check_store(key, value, k_cache, v_cache, slot_mapping),
    )
    if plan.grid[0] == 0:
        return
    _store_kv_kernel[plan.grid](
        key, value, k_cache, v_cache, slot_mapping.contiguous(), *plan.args,
        **plan.config.launch_kwargs,
    )


_rope_plans: launch.PlanCache[StorePlan] = launch.PlanCache()


def _check_rope(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                positions: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> StorePlan:
    launch.check_device(_rope_store_kv_kernel, query, key, value, k_cache, v_cache,
                        slot_mapping, positions, cos, sin)
    _check_cache(key, value, k_cache, v_cache, slot_mapping)
    num_tokens, _, head_dim = key.shape
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
    return StorePlan(
        rope_config(head_dim, k_cache.shape[1]), grid=(num_tokens,),
        args=(*query.stride()[:2], *_cache_strides(key, value, k_cache, v_cache),
              cos.stride(0), sin.stride(0), query.shape[1], key.shape[1]),
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
    plan = _rope_plans.get(
        launch.signature(query, key, value, k_cache, v_cache, slot_mapping, positions, cos,
                         sin),
        lambda: _check_rope(query, key, value, k_cache, v_cache, slot_mapping, positions,
                            cos, sin),
    )
    if plan.grid[0] == 0:
        return
    _rope_store_kv_kernel[plan.grid](
        query, key, value, k_cache, v_cache, slot_mapping.contiguous(), positions.contiguous(),
        cos, sin, *plan.args,
        **plan.config.launch_kwargs,
    )
