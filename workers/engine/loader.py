"""Load a Hugging Face Llama-family checkpoint into our model (config, weights, tokenizer, EOS).

Works with transformers 4.56+ (``rope_theta`` + ``rope_scaling``) and 5.x
(``rope_parameters``); inv_freq comes from transformers' own rope-init functions, so every
static scaling variant (linear, llama3, yarn) matches Hugging Face exactly.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from binbaton.kernels.ops import KernelOps
from binbaton.workers.engine.model import CausalLM, ModelShape, Rotary
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, GenerationConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

if TYPE_CHECKING:
    from transformers import PretrainedConfig

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3")
STATIC_ROPE_TYPES: tuple[str, ...] = ("default", "linear", "llama3", "yarn")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: CausalLM
    tokenizer: Any  # a Hugging Face tokenizer
    eos_token_ids: frozenset[int]
    max_model_len: int
    shape: ModelShape


def resolve_model_dir(model: str) -> Path:
    """A local directory as is; a hub id downloaded (config, weights, tokenizer)."""
    path = Path(model)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "tokenizer*"])
    )


def check_architecture(config: PretrainedConfig) -> None:
    if config.model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"model type {config.model_type!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"hidden_act {act!r} is not supported (only silu)")


def model_shape(config: PretrainedConfig) -> ModelShape:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    attention_bias = bool(getattr(config, "attention_bias", False))
    return ModelShape(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        rms_norm_eps=config.rms_norm_eps,
        qkv_bias=config.model_type == "qwen2" or attention_bias,
        o_bias=attention_bias and config.model_type != "qwen2",
        mlp_bias=bool(getattr(config, "mlp_bias", False)),
        qk_norm=config.model_type == "qwen3",
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
    )


def rope_parameters(config: PretrainedConfig) -> dict[str, Any]:
    """The rope dict in either transformers layout: 5.x rope_parameters, 4.x rope_scaling."""
    params = getattr(config, "rope_parameters", None)
    if params is None:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params = dict(params)
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    return params


def inv_freq_and_scaling(config: PretrainedConfig, head_dim: int) -> tuple[torch.Tensor, float]:
    params = rope_parameters(config)
    rope_type = params["rope_type"]
    if rope_type not in STATIC_ROPE_TYPES:
        raise ValueError(
            f"rope type {rope_type!r} is not supported; supported: {STATIC_ROPE_TYPES}"
        )
    if getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported")
    if rope_type == "default":  # transformers 5 dropped "default" from ROPE_INIT_FUNCTIONS
        base = float(params["rope_theta"])
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        return inv_freq, 1.0
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    return inv_freq.float(), float(scaling)


def context_length(config: PretrainedConfig, cap: int | None) -> int:
    """The model's context, clamped to a sliding window smaller than it.

    Within the window, sliding-window attention is ordinary causal attention, so serving
    at most ``sliding_window`` tokens per sequence is exact.
    """
    length = config.max_position_embeddings
    window = getattr(config, "sliding_window", None)
    uses_window = getattr(config, "use_sliding_window", True)  # Qwen2/3 gate it
    if window is not None and uses_window and window < length:
        if cap is not None and cap > window:
            raise ValueError(
                f"max_model_len {cap} exceeds the model's sliding window {window}; "
                "sliding-window attention beyond the window is not supported"
            )
        log.warning("serving at most %d tokens per sequence (the sliding window)", window)
        length = window
    if cap is not None:
        if cap > length:
            raise ValueError(f"max_model_len {cap} exceeds the model's context {length}")
        length = cap
    return length


def eos_ids(model_dir: Path, config: PretrainedConfig) -> frozenset[int]:
    """EOS ids from generation_config.json (what HF generate stops on), else the config."""
    try:
        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:
        eos = None
    if eos is None:
        eos = config.eos_token_id
    if eos is None:
        return frozenset()
    return frozenset([eos] if isinstance(eos, int) else eos)


def weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {model_dir}")
    return files


def load_weights(model: CausalLM, files: list[Path]) -> None:
    params = dict(model.named_parameters())  # tied lm_head appears once, as embed_tokens
    missing = set(params)
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                if name == "lm_head.weight" and model.shape.tie_word_embeddings:
                    continue
                if name not in params:
                    raise ValueError(f"unexpected weight {name!r} in {file.name}")
                params[name].data.copy_(f.get_tensor(name))
                missing.discard(name)
    if missing:
        raise ValueError(f"weights missing from the checkpoint: {sorted(missing)}")


def load_model(
    model: str, device: torch.device, dtype: str, ops: KernelOps, max_model_len: int | None
) -> LoadedModel:
    model_dir = resolve_model_dir(model)
    config = AutoConfig.from_pretrained(model_dir)
    check_architecture(config)
    shape = model_shape(config)
    context = context_length(config, max_model_len)
    inv_freq, scaling = inv_freq_and_scaling(config, shape.head_dim)
    net = CausalLM(shape, ops)
    load_weights(net, weight_files(model_dir))
    net = net.to(device=device, dtype=DTYPES[dtype]).eval()
    # cos/sin tables stay float32 and are cast per use, as Hugging Face does.
    net.rotary = Rotary(inv_freq, scaling, context).to(device)
    return LoadedModel(
        model=net,
        tokenizer=AutoTokenizer.from_pretrained(model_dir),
        eos_token_ids=eos_ids(model_dir, config),
        max_model_len=context,
        shape=shape,
    )
