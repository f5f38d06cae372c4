"""Triton kernels on the CPU under the interpreter, against their torch twins and float64.

The @triton.jit decorator (triton's own library functions included) decides interpreted
vs compiled at import time: tests/conftest.py sets TRITON_INTERPRET=1 on machines without
CUDA before any test module imports triton.
The checks themselves live in tests/gpu/kernel_checks.py, shared with the CUDA tests.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from binbaton.kernels import ops

pytest.importorskip("triton")
if torch.cuda.is_available():
    pytest.skip("CUDA present: the kernels compile; see tests/gpu", allow_module_level=True)


def _load_checks():
    name = "binbaton_kernel_checks"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "gpu" / "kernel_checks.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


kc = _load_checks()
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DecodeCase, PrefillCase, StoreCase, NormCase = (kc.DecodeCase, kc.PrefillCase, kc.StoreCase,
                                                kc.NormCase)

# batch 1/3/17, lengths 1/7/129/1000, GQA 1/2/7, head sizes 64/128 and 80/96, each dtype;
# long contexts only with small batch x heads (the interpreter runs every program in Python).
DECODE_CASES = [
    DecodeCase(1, 2, 1, 64, 1, 16, F32),
    DecodeCase(3, 7, 1, 80, 7, 8, F32),
    DecodeCase(17, 4, 4, 128, 129, 16, F32),
    DecodeCase(1, 14, 2, 96, 1000, 32, F32),  # heuristic picks 4 splits
    DecodeCase(3, 2, 2, 64, 129, 1, F32, num_splits=5),  # page size 1, split 5 > needed
    DecodeCase(3, 4, 2, 64, 1000, 16, F16, num_splits=3),
    DecodeCase(17, 2, 1, 64, 129, 16, F16, num_splits=1),
    DecodeCase(3, 4, 2, 128, 129, 16, BF16, num_splits=2),
    DecodeCase(1, 7, 1, 80, 1000, 16, BF16),
]

PREFILL_CASES = [
    PrefillCase((1,), 2, 1, 64, F32),
    PrefillCase((7, 1, 129), 7, 1, 80, F32),
    PrefillCase((5, 1, 9, 2, 13, 1, 7, 3, 11, 1, 4, 6, 1, 8, 2, 10, 3), 4, 4, 64, F32),
    PrefillCase((1000,), 2, 1, 64, F32),
    PrefillCase((7, 129, 33), 4, 2, 128, F16),
    PrefillCase((129, 1, 7), 7, 1, 96, BF16),
]

STORE_CASES = [
    StoreCase(1, 1, 64, 16, F32, F32),
    StoreCase(17, 2, 80, 16, F32, F32, padding=True),  # decode append, padding slots
    StoreCase(129, 4, 128, 16, F16, F16, strided=True),  # prefill from a fused qkv view
    StoreCase(7, 7, 96, 1, BF16, BF16, padding=True, strided=True),
    StoreCase(33, 2, 64, 8, F32, F16),  # cast into a half-precision cache
    StoreCase(9, 2, 64, 8, F32, BF16),
]

ROPE_CASES = [  # (case, query heads)
    (StoreCase(1, 1, 64, 16, F32, F32), 2),
    (StoreCase(17, 1, 128, 16, F32, F32, padding=True, strided=True), 7),
    (StoreCase(129, 2, 96, 16, F16, F16), 4),
    (StoreCase(7, 2, 80, 8, BF16, BF16, strided=True), 14),
]

NORM_CASES = [
    NormCase((1, 64), F32, F32, residual=False),
    NormCase((3, 7, 80), F32, F32, residual=True),
    NormCase((17, 1000), F16, F16, residual=True),
    NormCase((3, 96), BF16, BF16, residual=True),
    NormCase((7, 128), BF16, F32, residual=False),  # fp32 weight: output promotes
    NormCase((5, 4096), F16, F16, residual=False),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_kernels_are_interpreted():
    from binbaton.kernels import decode_attention, launch

    assert launch.is_interpreted(decode_attention._decode_split_kernel), (
        "binbaton.kernels.triton_ops was imported before TRITON_INTERPRET=1 was set"
    )


@pytest.mark.parametrize("case", DECODE_CASES, ids=str)
def test_decode_attention(case):
    kc.check_decode(case, "cpu")


@pytest.mark.parametrize("case", PREFILL_CASES, ids=str)
def test_prefill_attention(case):
    kc.check_prefill(case, "cpu")


@pytest.mark.parametrize("case", STORE_CASES, ids=str)
def test_store_kv(case):
    kc.check_store(case, "cpu")


@pytest.mark.parametrize(("case", "q_heads"), ROPE_CASES, ids=lambda c: str(c))
def test_rope_store_kv(case, q_heads):
    kc.check_rope_store(case, q_heads, "cpu")


@pytest.mark.parametrize("case", NORM_CASES, ids=str)
def test_rms_norm(case):
    kc.check_rms_norm(case, "cpu")


def test_rope_store_kv_matches_hf_rotary_exactly():
    """Float32: with the engine's cos/sin table the fused kernel rotates bit for bit like
    Hugging Face's apply_rotary_pos_emb (the engine calls it for every layer)."""
    from binbaton.kernels import triton_ops
    from binbaton.workers.engine.model import Rotary

    head_dim, max_len = 64, 300
    inv_freq = 1.0 / 1e6 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    rotary = Rotary(inv_freq, attention_scaling=1.0, max_len=max_len)
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(19, 8, head_dim, generator=gen)
    k = torch.randn(19, 2, head_dim, generator=gen)
    v = torch.randn(19, 2, head_dim, generator=gen)
    positions = torch.randint(0, max_len, (19,), generator=gen)
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q_engine, k_engine = apply_rotary_pos_emb(q, k, rotary.cos[positions], rotary.sin[positions])
    k_cache = torch.full((4, 8, 2, head_dim), float("nan"))
    v_cache = torch.full_like(k_cache, float("nan"))
    slots = torch.randperm(32, generator=gen)[:19]
    triton_ops.rope_store_kv(q, k, v, k_cache, v_cache, slots, positions, rotary.cos,
                             rotary.sin)
    assert torch.equal(q, q_engine) and torch.equal(k, k_engine)
    assert torch.equal(k_cache.view(-1, 2, head_dim)[slots], k_engine)
    assert torch.equal(v_cache.view(-1, 2, head_dim)[slots], v)


def test_decode_split_heuristic():
    from binbaton.kernels.decode_attention import pick_num_splits

    assert pick_num_splits(256, 8, 8192, sm_count=132) == 1  # batch fills the GPU
    assert pick_num_splits(1, 8, 100, sm_count=132) == 1  # too short to split
    assert pick_num_splits(1, 8, 8192, sm_count=132) == 32  # ~2 waves, 256 tokens each
    assert pick_num_splits(1, 1, 1 << 20, sm_count=132) == 64  # capped
    assert pick_num_splits(4, 2, 1000, sm_count=132) == 4  # >= 256 tokens per split


def test_launchers_reject_bad_input():
    from binbaton.kernels import triton_ops

    q = torch.randn(2, 4, 64)
    cache = torch.randn(4, 16, 2, 64)
    tables = torch.zeros(2, 4, dtype=torch.int32)
    lens = torch.ones(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="does not fit"):
        triton_ops.decode_attention(torch.randn(2, 3, 64), cache, cache, tables, lens, 0.1)
    with pytest.raises(TypeError, match="seq_lens"):
        triton_ops.decode_attention(q, cache, cache, tables, lens.float(), 0.1)
    with pytest.raises(ValueError, match="capacity"):
        triton_ops.decode_attention(q, cache, cache, tables, lens * 65, 0.1)
    with pytest.raises(ValueError, match="out"):
        triton_ops.decode_attention(q, cache, cache, tables, lens, 0.1, out=torch.empty(2, 4))
    with pytest.raises(ValueError, match="slot_mapping"):
        triton_ops.store_kv(q[:, :2], q[:, :2], cache, cache, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="even head size"):
        odd = torch.randn(2, 2, 5)
        triton_ops.rope_store_kv(odd, odd, odd, torch.randn(1, 4, 2, 5), torch.randn(1, 4, 2, 5),
                                 torch.zeros(2, dtype=torch.long),
                                 torch.zeros(2, dtype=torch.long), torch.ones(8, 5),
                                 torch.ones(8, 5))
    with pytest.raises(ValueError, match="multiple"):
        triton_ops.prefill_attention(torch.randn(3, 3, 64), torch.randn(3, 2, 64),
                                     torch.randn(3, 2, 64), torch.tensor([0, 3]), 0.1)
    with pytest.raises(ValueError, match="weight"):
        triton_ops.rms_norm(torch.randn(2, 8), torch.randn(7), 1e-6)


def test_select_ops():
    cpu = torch.device("cpu")
    assert ops.select_ops("auto", cpu).name == "torch"
    assert ops.select_ops("torch", cpu) is ops.TORCH_OPS
    triton_ops = ops.select_ops("triton", cpu)  # the interpreter is on in this process
    from binbaton.kernels import triton_ops as t

    assert triton_ops.name == "triton" and triton_ops.decode_attention is t.decode_attention
    assert triton_ops.rope_store_kv is t.rope_store_kv
    with pytest.raises(ValueError, match="not one of"):
        ops.select_ops("cuda", cpu)


def test_ops_import_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"  # any `import triton` now fails
        "import torch\n"
        "from binbaton.kernels import ops\n"
        "cpu = torch.device('cpu')\n"
        "assert ops.select_ops('auto', cpu).name == 'torch'\n"
        "assert not ops.triton_available(cpu)\n"
        "try:\n"
        "    ops.select_ops('triton', cpu)\n"
        "except RuntimeError as e:\n"
        "    print('refused:', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "refused: kernel backend 'triton' needs triton" in done.stdout


