"""Our batched forward pass for Llama-family decoders (Llama, Mistral, Qwen2, Qwen3).

Sequences are packed along one token axis, never padded to each other. A prefill batch
holds every newcomer's prompt (``cu_seqlens`` marks the boundaries); a decode batch holds
one token per row of the runner's static buffers (some rows may be padding). Attention,
KV cache writes and norms go through the kernel ops interface (``binbaton.kernels.ops``)
and nothing else.
Parameter names mirror the Hugging Face checkpoints, except the fused projections: q/k/v
are one ``qkv_proj`` and gate/up one ``gate_up_proj`` (one matmul each instead of three and
two; the loader concatenates the checkpoint's weights into them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
from binbaton.kernels.ops import KernelOps
from torch import nn


@dataclass(frozen=True)
class ModelShape:
    """What the forward pass needs to know about an architecture (from the HF config)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    qkv_bias: bool  # Qwen2, or Llama/Qwen3 with attention_bias
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool  # Qwen3
    tie_word_embeddings: bool


@dataclass(frozen=True)
class ForwardBatch:
    """Where each packed token sits: its position, its cache slot, and its sequence."""

    positions: torch.Tensor  # [T] int64
    slot_mapping: torch.Tensor  # [T] int64, cache slot each token's K/V is written to
    is_prefill: bool
    cu_seqlens: torch.Tensor | None = None  # prefill: [B + 1] int32 prefix sums
    block_tables: torch.Tensor | None = None  # decode: [B, max_blocks] int32
    seq_lens: torch.Tensor | None = None  # decode: [B] int32, cached tokens incl. new one
    # Host-known launch settings for the attention op (prefill: max_seqlen; decode:
    # max_seq_len, num_splits), only those the op takes: read nothing back from the device.
    attention_kwargs: dict[str, int] = field(default_factory=dict)


class Rotary(nn.Module):
    """cos/sin table for every position, from the model's (possibly scaled) inv_freq."""

    def __init__(self, inv_freq: torch.Tensor, attention_scaling: float, max_len: int):
        super().__init__()
        positions = torch.arange(max_len, dtype=torch.float32)
        freqs = positions[:, None] * inv_freq.float()[None, :]  # [L, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [L, D]
        self.register_buffer("cos", emb.cos() * attention_scaling, persistent=False)
        self.register_buffer("sin", emb.sin() * attention_scaling, persistent=False)


class Attention(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.shape = shape
        q_dim, kv_dim = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
        self.qkv_sizes = (q_dim, kv_dim, kv_dim)
        self.qkv_proj = nn.Linear(shape.hidden_size, sum(self.qkv_sizes), bias=shape.qkv_bias)
        self.o_proj = nn.Linear(q_dim, shape.hidden_size, bias=shape.o_bias)
        if shape.qk_norm:
            self.q_norm = RMSNormWeight(shape.head_dim)
            self.k_norm = RMSNormWeight(shape.head_dim)
        self.scale = shape.head_dim**-0.5

    def forward(
        self,
        x: torch.Tensor,  # [T, hidden]
        batch: ForwardBatch,
        k_cache: torch.Tensor,  # [N, bs, Hkv, D]
        v_cache: torch.Tensor,
        rotary: Rotary,
        ops: KernelOps,
    ) -> torch.Tensor:  # [T, hidden]
        s = self.shape
        q, k, v = self.qkv_proj(x).split(self.qkv_sizes, dim=-1)  # [T, Hq*D], [T, Hkv*D] x2
        q = q.view(-1, s.num_heads, s.head_dim)  # [T, Hq, D], rows strided, last dim dense
        k = k.view(-1, s.num_kv_heads, s.head_dim)  # [T, Hkv, D]
        v = v.view(-1, s.num_kv_heads, s.head_dim)
        if s.qk_norm:
            q, _ = ops.rms_norm(q, self.q_norm.weight, s.rms_norm_eps)
            k, _ = ops.rms_norm(k, self.k_norm.weight, s.rms_norm_eps)
        # rotates q and k in place, then writes k and v to their cache slots
        ops.rope_store_kv(q, k, v, k_cache, v_cache, batch.slot_mapping, batch.positions,
                          rotary.cos, rotary.sin)
        if batch.is_prefill:
            out = ops.prefill_attention(q, k, v, batch.cu_seqlens, self.scale,
                                        **batch.attention_kwargs)
        else:
            out = ops.decode_attention(q, k_cache, v_cache, batch.block_tables, batch.seq_lens,
                                       self.scale, **batch.attention_kwargs)
        return self.o_proj(out.reshape(-1, s.num_heads * s.head_dim))


class MLP(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        h, i, bias = shape.hidden_size, shape.intermediate_size, shape.mlp_bias
        self.gate_up_proj = nn.Linear(h, 2 * i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)

    def forward(self, x: torch.Tensor, ops: KernelOps) -> torch.Tensor:  # [T, hidden]
        return self.down_proj(ops.silu_and_mul(self.gate_up_proj(x)))  # [T, 2I] -> [T, I]


class RMSNormWeight(nn.Module):
    """Holds an RMSNorm weight; the norm itself is ``ops.rms_norm``."""

    def __init__(self, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))


class DecoderLayer(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.self_attn = Attention(shape)
        self.mlp = MLP(shape)
        self.input_layernorm = RMSNormWeight(shape.hidden_size)
        self.post_attention_layernorm = RMSNormWeight(shape.hidden_size)


class DecoderStack(nn.Module):
    """The ``model.`` prefix of the checkpoints."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(shape) for _ in range(shape.num_layers))
        self.norm = RMSNormWeight(shape.hidden_size)


class CausalLM(nn.Module):
    def __init__(self, shape: ModelShape, ops: KernelOps):
        super().__init__()
        self.shape = shape
        self.ops = ops
        self.rotary: Rotary | None = None  # set by the loader, after the dtype cast
        self.model = DecoderStack(shape)
        self.lm_head = nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)
        if shape.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        batch: ForwardBatch,
        k_caches: list[torch.Tensor],  # per layer [N, bs, Hkv, D]
        v_caches: list[torch.Tensor],
        logits_index: torch.Tensor | None = None,  # [B] tokens that produce logits (None: all)
    ) -> torch.Tensor:  # [B, vocab] float32
        eps, ops, rotary = self.shape.rms_norm_eps, self.ops, self.rotary
        assert rotary is not None, "the loader sets the rotary table"
        hidden = self.model.embed_tokens(input_ids)  # [T, hidden]
        residual: torch.Tensor | None = None
        layers = cast("list[DecoderLayer]", self.model.layers)
        for layer, k_cache, v_cache in zip(layers, k_caches, v_caches, strict=True):
            normed, residual = ops.rms_norm(hidden, layer.input_layernorm.weight, eps, residual)
            hidden = layer.self_attn(normed, batch, k_cache, v_cache, rotary, ops)
            normed, residual = ops.rms_norm(
                hidden, layer.post_attention_layernorm.weight, eps, residual
            )
            hidden = layer.mlp(normed, ops)
        assert residual is not None, "a model has at least one layer"
        if logits_index is not None:
            hidden, residual = hidden[logits_index], residual[logits_index]  # [B, hidden]
        normed, _ = ops.rms_norm(hidden, self.model.norm.weight, eps, residual)
        return self.lm_head(normed).float()
