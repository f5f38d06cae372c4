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
