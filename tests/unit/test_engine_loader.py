"""Loading details: rope variants match Hugging Face, both transformers config layouts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from binbaton.workers.engine.loader import inv_freq_and_scaling, rope_parameters
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

SCALINGS = [
    None,
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 128},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
]


@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda s: s["rope_type"] if s else "default")
def test_rope_matches_hugging_face(scaling):
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=512,
                         rope_theta=50000.0, rope_scaling=scaling)
    hf = LlamaRotaryEmbedding(config)
    inv_freq, scaling_factor = inv_freq_and_scaling(config, head_dim=16)
    torch.testing.assert_close(inv_freq, hf.inv_freq, rtol=0, atol=0)
    assert scaling_factor == hf.attention_scaling


def test_transformers_4_layout_is_read():
    old = SimpleNamespace(rope_theta=500000.0, rope_scaling={"type": "linear", "factor": 2.0})
    assert rope_parameters(old) == {
        "type": "linear", "factor": 2.0, "rope_theta": 500000.0, "rope_type": "linear"
    }
    assert rope_parameters(SimpleNamespace(rope_theta=10.0, rope_scaling=None)) == {
        "rope_theta": 10.0, "rope_type": "default"
    }


def test_dynamic_rope_is_rejected_with_the_supported_list():
    config = LlamaConfig(hidden_size=64, num_attention_heads=4,
                         rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(ValueError, match=r"dynamic.*supported"):
        inv_freq_and_scaling(config, head_dim=16)


def _empty_model(checkpoint):
    from binbaton.kernels.ops import TORCH_OPS
    from binbaton.workers.engine.loader import model_shape
    from binbaton.workers.engine.model import CausalLM
    from transformers import AutoConfig

    return CausalLM(model_shape(AutoConfig.from_pretrained(checkpoint)), TORCH_OPS)


def test_fused_projections_are_the_checkpoints_tensors_stacked(tiny_qwen2_dir):
    """Qwen2: q/k/v with biases into qkv_proj, gate/up into gate_up_proj, tied lm_head."""
    from binbaton.workers.engine.loader import load_weights
    from safetensors.torch import load_file

    weights = load_file(tiny_qwen2_dir / "model.safetensors")
    model = _empty_model(tiny_qwen2_dir)
    load_weights(model, weights.items())
    layer = model.model.layers[1]
    prefix = "model.layers.1."
    for kind in ("weight", "bias"):
        expected = torch.cat([weights[f"{prefix}self_attn.{p}_proj.{kind}"] for p in "qkv"])
        assert torch.equal(getattr(layer.self_attn.qkv_proj, kind), expected)
    gate_up = torch.cat([weights[f"{prefix}mlp.{p}_proj.weight"] for p in ("gate", "up")])
    assert torch.equal(layer.mlp.gate_up_proj.weight, gate_up)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_bad_weights_are_named(tiny_qwen3_dir):
    from binbaton.workers.engine.loader import load_weights
    from safetensors.torch import load_file

    weights = load_file(tiny_qwen3_dir / "model.safetensors")
    missing = {k: v for k, v in weights.items() if k != "model.layers.0.self_attn.k_proj.weight"}
    with pytest.raises(ValueError, match=r"missing.*model\.layers\.0\.self_attn\.k_proj\.weight"):
        load_weights(_empty_model(tiny_qwen3_dir), missing.items())
    wrong = dict(weights)
    wrong["model.layers.0.mlp.up_proj.weight"] = wrong["model.layers.0.mlp.up_proj.weight"][:-1]
    with pytest.raises(ValueError, match=r"up_proj\.weight' has shape"):
        load_weights(_empty_model(tiny_qwen3_dir), wrong.items())
    with pytest.raises(ValueError, match=r"unexpected weight 'model\.extra\.weight'"):
        load_weights(_empty_model(tiny_qwen3_dir), [*weights.items(),
                                                   ("model.extra.weight", torch.zeros(1))])
