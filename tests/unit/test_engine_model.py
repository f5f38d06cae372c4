"""The forward pass's host-side shortcuts: layer weights looked up once, static outputs."""

from __future__ import annotations

import torch
from binbaton.kernels.ops import TORCH_OPS
from binbaton.workers.engine.model import CausalLM, ForwardBatch, ModelShape, Rotary

SHAPE = ModelShape(vocab_size=50, hidden_size=16, intermediate_size=24, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=4, rms_norm_eps=1e-6, qkv_bias=True,
                   o_bias=False, mlp_bias=False, qk_norm=False, tie_word_embeddings=True)


def _model() -> CausalLM:
    torch.manual_seed(0)
    model = CausalLM(SHAPE, TORCH_OPS)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    model.rotary = Rotary(1.0 / 10000 ** (torch.arange(0, 4, 2) / 4), 1.0, 64)
    return model


def test_layer_weights_are_looked_up_again_after_a_cast() -> None:
    model = _model()
    first = model.layer_weights()
    assert model.layer_weights() is first  # once, not per forward
    model.to(torch.float64)
    qkv = model.layer_weights()[0].qkv_t
    assert qkv.dtype == torch.float64
    assert torch.equal(qkv, model.model.layers[0].self_attn.qkv_proj.weight.t())


def test_decode_into_static_outputs_equals_fresh_outputs() -> None:
    model, rows, bucket = _model(), 8, 5
    caches = [torch.randn(4, 16, 2, 4) for _ in range(4)]  # k, v per layer: [N, bs, Hkv, D]
    seq_lens = torch.tensor([3, 17, 1, 9, 30], dtype=torch.int32)
    positions = seq_lens.long() - 1
    block_tables = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0], [0, 1]], dtype=torch.int32)
    slots = block_tables.long().gather(1, (positions // 16)[:, None])[:, 0] * 16 + positions % 16
    batch = ForwardBatch(positions=positions, slot_mapping=slots, is_prefill=False,
                         block_tables=block_tables, seq_lens=seq_lens)
    ids = torch.tensor([1, 7, 42, 3, 9])
    fresh = model(ids, batch, caches[:2], caches[2:])
    static = model(ids, batch, caches[:2], caches[2:], outputs=model.decode_outputs(rows)(bucket))
    assert torch.equal(fresh, static)
