"""Load a Hugging Face Llama-family checkpoint into our model (config, weights, tokenizer, EOS).

Works with transformers 4.56+ (``rope_theta`` + ``rope_scaling``) and 5.x
(``rope_parameters``); inv_freq comes from transformers' own rope-init functions, so every
static scaling variant (linear, llama3, yarn) matches Hugging Face exactly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
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


# A checkpoint's projection -> (our fused projection, its shard); shards stack along rows.
FUSED_SHARDS: dict[str, tuple[str, int]] = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


def fused_shard_rows(shape: ModelShape) -> dict[str, tuple[int, ...]]:
    """Rows of each shard of the fused projections (q, k, v; gate, up)."""
    q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    return {"qkv_proj": (q, kv, kv), "gate_up_proj": (shape.intermediate_size,) * 2}


def safetensors_weights(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, tensor) of every tensor in the files, one at a time."""
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, f.get_tensor(name)


def load_weights(model: CausalLM, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy Hugging Face-named tensors into ``model``, from any source (safetensors, GGUF).

    q/k/v go into ``qkv_proj`` and gate/up into ``gate_up_proj`` at their row offsets
    (weights and biases alike); every other tensor loads by its own name.
    """
    params = dict(model.named_parameters())  # tied lm_head appears once, as embed_tokens
    rows = fused_shard_rows(model.shape)
    missing = {hf_name for name in params for hf_name in _hf_names(name)}
    for hf_name, tensor in weights:
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        if hf_name == "lm_head.weight" and model.shape.tie_word_embeddings:
            continue
        name, fused, shard = _our_name(hf_name)
        if name not in params:
            raise ValueError(f"unexpected weight {hf_name!r}")
        target = params[name].data
        if fused is not None:
            sizes = rows[fused]
            target = target.narrow(0, sum(sizes[:shard]), sizes[shard])
        if target.shape != tensor.shape:
            raise ValueError(
                f"weight {hf_name!r} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(target.shape)}"
            )
        target.copy_(tensor)
        missing.discard(hf_name)
    if missing:
        raise ValueError(f"weights missing from the checkpoint: {sorted(missing)}")


def _our_name(hf_name: str) -> tuple[str, str | None, int]:
    """'model.layers.0.self_attn.k_proj.bias' -> ('model.layers.0.self_attn.qkv_proj.bias',
    'qkv_proj', 1); a name of no fused projection comes back as it is, with (None, 0)."""
    parts = hf_name.split(".")
    if len(parts) < 2 or parts[-2] not in FUSED_SHARDS:
        return hf_name, None, 0
    fused, shard = FUSED_SHARDS[parts[-2]]
    return ".".join([*parts[:-2], fused, parts[-1]]), fused, shard


def _hf_names(name: str) -> list[str]:
    """The checkpoint's names of our parameter: one per shard of a fused projection."""
    parts = name.split(".")
    projs = [hf for hf, (fused, _) in FUSED_SHARDS.items() if parts[-2:-1] == [fused]]
    return [".".join([*parts[:-2], proj, parts[-1]]) for proj in projs] or [name]


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
    load_weights(net, safetensors_weights(weight_files(model_dir)))
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
