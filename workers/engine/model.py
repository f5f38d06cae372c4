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

from collections.abc import Callable
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
    """Holds the attention parameters; the computation is ``attention`` (below)."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        q_dim, kv_dim = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
        self.qkv_proj = nn.Linear(shape.hidden_size, q_dim + 2 * kv_dim, bias=shape.qkv_bias)
        self.o_proj = nn.Linear(q_dim, shape.hidden_size, bias=shape.o_bias)
        if shape.qk_norm:
            self.q_norm = RMSNormWeight(shape.head_dim)
            self.k_norm = RMSNormWeight(shape.head_dim)


class MLP(nn.Module):
    """Holds the MLP parameters; the computation is ``mlp`` (below)."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        h, i, bias = shape.hidden_size, shape.intermediate_size, shape.mlp_bias
        self.gate_up_proj = nn.Linear(h, 2 * i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)


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


@dataclass(frozen=True)
class LayerWeights:
    """One layer's parameters, looked up once: the forward's loop over layers makes no
    nn.Module attribute lookups or module calls (each costs host time on every layer).
    Projection weights are held transposed ([in, out] views), as ``F.linear`` passes them
    to ``addmm``/``mm``."""

    input_norm: torch.Tensor
    qkv_t: torch.Tensor
    qkv_bias: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    o_t: torch.Tensor
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up_t: torch.Tensor
    gate_up_bias: torch.Tensor | None
    down_t: torch.Tensor
    down_bias: torch.Tensor | None

    @classmethod
    def of(cls, layer: DecoderLayer) -> LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp
        qk_norm = hasattr(attn, "q_norm")
        return cls(
            input_norm=layer.input_layernorm.weight,
            qkv_t=attn.qkv_proj.weight.t(), qkv_bias=attn.qkv_proj.bias,
            q_norm=attn.q_norm.weight if qk_norm else None,
            k_norm=attn.k_norm.weight if qk_norm else None,
            o_t=attn.o_proj.weight.t(), o_bias=attn.o_proj.bias,
            post_norm=layer.post_attention_layernorm.weight,
            gate_up_t=mlp.gate_up_proj.weight.t(), gate_up_bias=mlp.gate_up_proj.bias,
            down_t=mlp.down_proj.weight.t(), down_bias=mlp.down_proj.bias,
        )


def linear(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None,
           out: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` of a 2-D x, as F.linear computes it (``addmm`` with a
    bias, ``mm`` without), optionally into ``out``."""
    if bias is None:
        return torch.mm(x, weight_t, out=out)
    return torch.addmm(bias, x, weight_t, out=out)


@dataclass(frozen=True)
class LayerOutputs:
    """Where each layer's results go. Empty (every field None): fresh tensors, as prefill
    needs. The decode forward's: rows [0, bucket) of the runner's static buffers, the same
    tensors every step (what a CUDA graph captures; eagerly, no allocation per layer)."""

    hidden: torch.Tensor | None = None  # [B, hidden]: o_proj's and down_proj's output
    qkv: torch.Tensor | None = None  # [B, (Hq + 2 Hkv) D]
    q_k_v: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # views of qkv
    gate_up: torch.Tensor | None = None  # [B, 2I]
    # outputs of the ops that write into them (KernelOps.writes_out): rms_norm's normed
    # [B, hidden] and residual [B, hidden] (updated in place), silu_and_mul's [B, I]
    norm_out: dict[str, torch.Tensor] = field(default_factory=dict)
    silu_out: dict[str, torch.Tensor] = field(default_factory=dict)


FRESH = LayerOutputs()


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
        # q, k, v heads of the fused projection's output viewed as [T, heads, head_dim]
        self.qkv_heads = [shape.num_heads, shape.num_kv_heads, shape.num_kv_heads]
        self.scale = shape.head_dim**-0.5
        self._layer_weights: list[LayerWeights] | None = None  # on the first forward

    def layer_weights(self) -> list[LayerWeights]:
        """Every layer's parameters, looked up on the first forward after construction or
        a cast (loading copies into the parameters in place, which the views follow)."""
        if self._layer_weights is None:
            layers = cast("list[DecoderLayer]", self.model.layers)
            self._layer_weights = [LayerWeights.of(layer) for layer in layers]
        return self._layer_weights

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor],
               recurse: bool = True) -> CausalLM:
        self._layer_weights = None  # .to() and the like may give parameters new data
        return super()._apply(fn, recurse)

    def decode_outputs(self, rows: int) -> Callable[[int], LayerOutputs]:
        """Static buffers for a decode forward of up to ``rows`` tokens; the returned
        function gives the LayerOutputs of its first ``n`` rows."""
        s = self.shape
        dtype, device = self.lm_head.weight.dtype, self.lm_head.weight.device
        heads = sum(self.qkv_heads)
        hidden = torch.empty(rows, s.hidden_size, dtype=dtype, device=device)
        qkv = torch.empty(rows, heads * s.head_dim, dtype=dtype, device=device)
        gate_up = torch.empty(rows, 2 * s.intermediate_size, dtype=dtype, device=device)
        normed, residual = torch.empty_like(hidden), torch.empty_like(hidden)
        act = torch.empty(rows, s.intermediate_size, dtype=dtype, device=device)

        def first(n: int) -> LayerOutputs:
            q, k, v = qkv[:n].view(n, heads, s.head_dim).split_with_sizes(self.qkv_heads, 1)
            writes = self.ops.writes_out
            return LayerOutputs(
                hidden=hidden[:n], qkv=qkv[:n], q_k_v=(q, k, v), gate_up=gate_up[:n],
                norm_out={"out": normed[:n], "residual_out": residual[:n]} if writes else {},
                silu_out={"out": act[:n]} if writes else {},
            )

        return first

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        batch: ForwardBatch,
        k_caches: list[torch.Tensor],  # per layer [N, bs, Hkv, D]
        v_caches: list[torch.Tensor],
        logits_index: torch.Tensor | None = None,  # [B] tokens that produce logits (None: all)
        outputs: LayerOutputs = FRESH,
    ) -> torch.Tensor:  # [B, vocab] float32
        eps, ops, rotary, o = self.shape.rms_norm_eps, self.ops, self.rotary, outputs
        assert rotary is not None, "the loader sets the rotary table"
        cos, sin = cast("torch.Tensor", rotary.cos), cast("torch.Tensor", rotary.sin)
        rms_norm, silu_and_mul = ops.rms_norm, ops.silu_and_mul
        hidden = self.model.embed_tokens(input_ids)  # [T, hidden]
        residual: torch.Tensor | None = None
        for w, k_cache, v_cache in zip(self.layer_weights(), k_caches, v_caches, strict=True):
            normed, residual = rms_norm(hidden, w.input_norm, eps, residual, **o.norm_out)
            attended = self._attention(w, normed, batch, k_cache, v_cache, cos, sin, o)
            hidden = linear(attended, w.o_t, w.o_bias, o.hidden)  # [T, hidden]
            normed, residual = rms_norm(hidden, w.post_norm, eps, residual, **o.norm_out)
            gate_up = linear(normed, w.gate_up_t, w.gate_up_bias, o.gate_up)  # [T, 2I]
            hidden = linear(silu_and_mul(gate_up, **o.silu_out), w.down_t, w.down_bias,
                            o.hidden)  # [T, I] -> [T, hidden]
        assert residual is not None, "a model has at least one layer"
        if logits_index is not None:
            hidden, residual = hidden[logits_index], residual[logits_index]  # [B, hidden]
        normed, _ = rms_norm(hidden, self.model.norm.weight, eps, residual, **o.norm_out)
        return self.lm_head(normed).float()

    def _attention(
        self,
        w: LayerWeights,
        x: torch.Tensor,  # [T, hidden]
        batch: ForwardBatch,
        k_cache: torch.Tensor,  # [N, bs, Hkv, D]
        v_cache: torch.Tensor,
        cos: torch.Tensor,  # [max_pos, D]
        sin: torch.Tensor,
        o: LayerOutputs,
    ) -> torch.Tensor:  # [T, Hq * D], before o_proj
        s, ops = self.shape, self.ops
        qkv = linear(x, w.qkv_t, w.qkv_bias, o.qkv)  # [T, (Hq + 2 Hkv) D]
        if o.q_k_v is None:  # [T, Hq, D], [T, Hkv, D] x2: rows strided, last dim dense
            q, k, v = qkv.view(-1, sum(self.qkv_heads), s.head_dim).split_with_sizes(
                self.qkv_heads, 1)
        else:
            q, k, v = o.q_k_v
        if w.q_norm is not None and w.k_norm is not None:
            q, _ = ops.rms_norm(q, w.q_norm, s.rms_norm_eps)
            k, _ = ops.rms_norm(k, w.k_norm, s.rms_norm_eps)
        # rotates q and k in place, then writes k and v to their cache slots
        ops.rope_store_kv(q, k, v, k_cache, v_cache, batch.slot_mapping, batch.positions,
                          cos, sin)
        if batch.is_prefill:
            out = ops.prefill_attention(q, k, v, batch.cu_seqlens, self.scale,
                                        **batch.attention_kwargs)
        else:
            out = ops.decode_attention(q, k_cache, v_cache, batch.block_tables, batch.seq_lens,
                                       self.scale, **batch.attention_kwargs)
        return out.reshape(-1, s.num_heads * s.head_dim)
