"""Pure-torch reference twins of every kernel op.

These run on any device and define the semantics the Triton kernels must match.
Cache layout (paged): one K and one V tensor per layer, each
    [num_blocks, block_size, num_kv_heads, head_dim];
a sequence's token t lives in block ``block_table[t // block_size]`` at offset
``t % block_size``; its "slot" is ``block * block_size + offset``.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def store_kv(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int64, slot of each token (< 0: padding, skipped)
) -> None:
    """Write each token's K/V into its cache slot (prefill insertion and decode append)."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    slots = slot_mapping.long()
    keep = slots >= 0
    if not bool(keep.all()):
        slots, key, value = slots[keep], key[keep], value[keep]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, key.to(k_cache.dtype))
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, value.to(v_cache.dtype))


def apply_rope(
    x: torch.Tensor,  # [T, H, D]
    positions: torch.Tensor,  # [T]
    cos: torch.Tensor,  # [max_pos, D], Hugging Face layout (both halves)
    sin: torch.Tensor,  # [max_pos, D]
) -> torch.Tensor:  # [T, H, D] in x's dtype
    """Rotary embedding, "rotate_half" form: x * cos + rotate_half(x) * sin, in float32."""
    c = cos[positions.long()].float()[:, None, :]  # [T, 1, D]
    s = sin[positions.long()].float()[:, None, :]
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x32 * c + rotated * s).to(x.dtype)


def rope_store_kv(
    query: torch.Tensor,  # [T, Hq, D], rotated in place
    key: torch.Tensor,  # [T, Hkv, D], rotated in place
    value: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    slot_mapping: torch.Tensor,  # [T], slot of each token (< 0: rotate but do not store)
    positions: torch.Tensor,  # [T], each token's position in its sequence
    cos: torch.Tensor,  # [max_pos, D]
    sin: torch.Tensor,  # [max_pos, D]
) -> None:
    """Rotate query and key in place, then store the rotated key and the value."""
    query.copy_(apply_rope(query, positions, cos, sin))
    key.copy_(apply_rope(key, positions, cos, sin))
    store_kv(key, value, k_cache, v_cache, slot_mapping)


def decode_attention(
    query: torch.Tensor,  # [B, Hq, D], one new token per sequence
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    seq_lens: torch.Tensor,  # [B] int32, tokens in cache incl. the new one
    scale: float,
) -> torch.Tensor:  # [B, Hq, D]
    """Attention of one query per sequence over that sequence's cached keys (GQA)."""
    batch, num_q_heads, head_dim = query.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    lens = seq_lens.long()
    max_len = int(lens.max())
    positions = torch.arange(max_len, device=query.device)  # [L]
    valid = positions[None, :] < lens[:, None]  # [B, L]
    # Past a sequence's end, read its last token again: finite values whose probability is
    # exactly 0, so the values need no mask and no block past the end is read.
    positions = torch.minimum(positions[None, :], (lens[:, None] - 1).clamp(min=0))  # [B, L]
    blocks = block_tables.long().gather(1, positions // block_size)  # [B, L]
    slots = blocks * block_size + positions % block_size  # [B, L]
    shape = (batch, max_len, num_kv_heads, head_dim)
    keys = k_cache.view(-1, num_kv_heads, head_dim).index_select(0, slots.view(-1))
    values = v_cache.view(-1, num_kv_heads, head_dim).index_select(0, slots.view(-1))
    keys, values = keys.view(shape).float(), values.view(shape).float()  # [B, L, Hkv, D]
    q = query.float().view(batch, num_kv_heads, group, head_dim)
    scores = torch.matmul(q, keys.permute(0, 2, 3, 1)) * scale  # [B, Hkv, G, L]
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, values.permute(0, 2, 1, 3))  # [B, Hkv, G, D]
    return out.reshape(batch, num_q_heads, head_dim).to(query.dtype)


def prefill_attention(
    query: torch.Tensor,  # [T, Hq, D], all newcomers' prompt tokens packed
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    cu_seqlens: torch.Tensor,  # [B + 1] int32, prefix sums of prompt lengths
    scale: float,
) -> torch.Tensor:  # [T, Hq, D]
    """Causal self-attention within each packed sequence (no padding between them)."""
    out = torch.empty_like(query)
    bounds = cu_seqlens.tolist()
    for start, end in itertools.pairwise(bounds):
        q = query[start:end].transpose(0, 1).float()  # [Hq, L, D]
        k = key[start:end].transpose(0, 1).float()  # [Hkv, L, D], shared by Hq / Hkv heads
        v = value[start:end].transpose(0, 1).float()
        o = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale, enable_gqa=True
        )
        out[start:end] = o.transpose(0, 1).to(query.dtype)
    return out


def rms_norm(
    x: torch.Tensor,  # [..., H]
    weight: torch.Tensor,  # [H]
    eps: float,
    residual: torch.Tensor | None = None,  # [..., H]
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm with optional fused residual add: returns (normed, new_residual).

    new_residual is ``x + residual`` (or ``x`` when no residual is given), in x's dtype,
    matching the Llama block's ``hidden = residual + attn_out; normed = norm(hidden)``.
    """
    hidden = x if residual is None else x + residual
    h32 = hidden.float()
    normed = h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype), hidden


def silu_and_mul(
    x: torch.Tensor,  # [T, 2I]: the gate in the first half, the up projection in the second
    out: torch.Tensor | None = None,  # [T, I] in x's dtype (else allocated)
) -> torch.Tensor:  # [T, I]
    """The MLP's ``silu(gate) * up``, computed in float32 and rounded once to x's dtype.

    In float32 this is bit for bit Hugging Face's ``act_fn(gate_proj(x)) * up_proj(x)``:
    silu runs on a contiguous copy of the gate, as on gate_proj's own output (torch's
    vectorized and scalar silu may differ in the last bit, and which one an element gets
    depends on the layout)."""
    gate, up = x.chunk(2, dim=-1)
    result = (F.silu(gate.float().contiguous()) * up.float()).to(x.dtype)
    if out is None:
        return result
    return out.copy_(result)
