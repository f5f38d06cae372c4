"""The default KV budget: a fraction of the memory left, capped at max_batch full contexts."""

from __future__ import annotations

import os

import pytest
import torch
from binbaton.workers.engine.kv_cache import bytes_per_token
from binbaton.workers.engine.memory import (
    CPU_KV_MEMORY_FRACTION,
    CUDA_KV_MEMORY_FRACTION,
    announce_kv_cache,
    available_ram_bytes,
    cgroup_bytes_left,
    default_kv_budget_tokens,
    kv_cache_line,
    kv_memory_fraction,
    meminfo_available_bytes,
)

GIB = 2**30


def test_budget_is_the_fraction_of_available_memory():
    # 10 GiB * 0.1 = 1 GiB of 1 MiB tokens
    assert default_kv_budget_tokens(2**20, 16, 8192, 10 * GIB, 0.1) == 1024


def test_budget_is_capped_at_max_batch_full_contexts():
    assert default_kv_budget_tokens(1024, 4, 512, 100 * GIB, 0.5) == 4 * 512


def test_budget_rounds_down_to_whole_tokens():
    assert default_kv_budget_tokens(1000, 16, 8192, 10_999, 1.0) == 10


def test_smollm2_default_budget_on_a_24_gb_machine():
    # SmolLM2-135M: 30 layers, 3 KV heads of 64, float32 -> 45 KiB per token; 8192 context.
    token_bytes = bytes_per_token(30, 3, 64, torch.float32)
    assert token_bytes == 46_080
    available = 22 * GIB  # MemAvailable on the 24 GB development machine after the weights
    tokens = default_kv_budget_tokens(token_bytes, 16, 8192, available, CPU_KV_MEMORY_FRACTION)
    assert tokens == 12_815  # ~1.6 full contexts instead of 16 (131,072 tokens, 5.6 GiB)
    assert tokens * token_bytes < 600 * 2**20


def test_fraction_defaults_per_device_unless_configured():
    assert kv_memory_fraction(None, "cpu") == CPU_KV_MEMORY_FRACTION
    assert kv_memory_fraction(None, "cuda") == CUDA_KV_MEMORY_FRACTION
    assert kv_memory_fraction(0.3, "cpu") == 0.3


def test_meminfo_available_is_read_in_bytes():
    meminfo = "MemTotal:       24683568 kB\nMemFree:  1 kB\nMemAvailable:   23930840 kB\n"
    assert meminfo_available_bytes(meminfo) == 23_930_840 * 1024
    with pytest.raises(ValueError, match="MemAvailable"):
        meminfo_available_bytes("MemTotal: 1 kB\n")


def test_available_ram_is_read_from_this_machine():
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < available_ram_bytes() <= total


@pytest.mark.parametrize(
    ("limit", "usage", "left"),
    [
        ("max\n", "123\n", None),  # cgroup v2, no limit
        ("9223372036854771712\n", "123\n", None),  # cgroup v1, no limit
        ("4294967296\n", "1073741824\n", 3 * GIB),
        ("1000\n", "2000\n", 0),
    ],
)
def test_cgroup_limit_lowers_what_is_left(limit, usage, left):
    assert cgroup_bytes_left(limit, usage) == left


def test_kv_cache_line_reaches_stderr(capsys):
    assert kv_cache_line(12_608, 46_080) == "kv cache: 12608 tokens, 554 MiB"
    announce_kv_cache(12_608, 46_080)
    assert capsys.readouterr().err == "kv cache: 12608 tokens, 554 MiB\n"


def test_engine_sizes_its_default_cache_from_available_ram(tiny_llama_dir, monkeypatch, capsys):
    from binbaton.workers.engine import memory
    from binbaton.workers.engine.config import EngineConfig
    from binbaton.workers.engine.engine import Engine

    monkeypatch.setattr(memory, "available_ram_bytes", lambda: 100 * 2**20)
    engine = Engine(EngineConfig(model=str(tiny_llama_dir), max_batch=8, block_size=16))
    shape = engine.model.shape
    token_bytes = bytes_per_token(shape.num_layers, shape.num_kv_heads, shape.head_dim,
                                  torch.float32)
    budget = int(100 * 2**20 * CPU_KV_MEMORY_FRACTION) // token_bytes
    assert budget < 8 * engine.max_model_len  # the fraction decides here, not the cap
    assert engine.cache.capacity_tokens == budget // 16 * 16
    assert f"kv cache: {engine.cache.capacity_tokens} tokens," in capsys.readouterr().err
