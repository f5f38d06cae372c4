"""The model a benchmark runs: a local checkpoint, or a random one built on the spot.

Presets (random weights with a fixed seed, real tokenizer) are built once and kept under
``~/.cache/binbaton/bench/<preset>``, so repeated runs neither rebuild nor leak them:
- ``tiny``: a small Llama sized for a 2-core CPU run of minutes.
- ``wide``: a wide, shallow Llama (hidden 1536, 2 layers, intermediate 4x) whose 277 MiB of
  float32 weights exceed what a core keeps in cache, so that reading the weights weighs
  most in a decode step, as on a GPU (on one CPU core the step still grows with the batch;
  bench/README.md has the measured step costs).
- ``qwen2.5-0.5b-shape``: Qwen2.5-0.5B's layer shapes (24 layers, hidden 896, 14 heads,
  2 KV heads) with random weights, for the GPU benchmark. Its vocabulary is the tiny
  tokenizer's (~1k ids, not 152k), which makes the LM head cheaper than the real model's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from binbaton.workers.engine.tiny import save_tiny_checkpoint

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        arch="llama",
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=4096,
    ),
    "wide": dict(
        arch="llama",
        hidden_size=1536,
        intermediate_size=6144,
        num_hidden_layers=2,
        num_attention_heads=24,
        num_key_value_heads=12,
        max_position_embeddings=4096,
    ),
    "qwen2.5-0.5b-shape": dict(
        arch="qwen2",
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=0.02,
    ),
}


PRESET_CACHE = Path.home() / ".cache" / "binbaton" / "bench"


def prepare_checkpoint(model: str, work_dir: Path | None = None) -> Path:
    """A directory holding the model: ``model`` itself, or a preset (built once, cached)."""
    if model in PRESETS:
        path = (work_dir or PRESET_CACHE) / model
        if not (path / "config.json").exists():
            _build_preset(model, path)
        return path
    path = Path(model)
    if not (path / "config.json").exists():
        raise ValueError(
            f"--model must be a checkpoint directory or one of {sorted(PRESETS)}, got {model!r}"
        )
    return path


def _build_preset(preset: str, path: Path) -> None:
    """Written beside ``path`` and renamed into place, so a killed run leaves no half model."""
    overrides = dict(PRESETS[preset])
    arch = overrides.pop("arch")
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_tiny_checkpoint(partial, arch=arch, seed=0, **overrides)
    partial.rename(path)


def describe_checkpoint(path: Path, preset: str | None) -> dict[str, Any]:
    """Name and shape of the model (a results file's ``model`` field)."""
    config = json.loads((path / "config.json").read_text())
    keys = (
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "max_position_embeddings",
    )
    shape = {k: config[k] for k in keys if k in config}
    name = preset or path.name
    return {"name": name, "path": str(path) if preset is None else "", **shape,
            "weights": "random (seed 0)" if preset else "from checkpoint"}
