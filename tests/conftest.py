"""Shared fixtures: tiny random checkpoints (real config, safetensors, tokenizer) on disk."""

from __future__ import annotations

from pathlib import Path

import pytest


def _tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, arch: str) -> Path:
    import torch
    from binbaton.workers.engine.tiny import save_tiny_checkpoint

    torch.set_num_threads(1)  # 2 shared cores; tiny models gain nothing from threads
    return save_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny-{arch}"), arch=arch, seed=0)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama with Llama-3 rope scaling."""
    return _tiny_checkpoint(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mistral with grouped-query attention."""
    return _tiny_checkpoint(tmp_path_factory, "mistral")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2: q/k/v bias, tied embeddings."""
    return _tiny_checkpoint(tmp_path_factory, "qwen2")


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3: q/k norm, explicit head_dim."""
    return _tiny_checkpoint(tmp_path_factory, "qwen3")
