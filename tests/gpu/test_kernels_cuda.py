"""The kernel checks of tests/unit/test_kernels.py on CUDA (compiled Triton), plus sizes
the interpreter cannot afford. Skipped without CUDA, and when this process already runs
the kernels interpreted (run ``pytest tests/gpu`` on its own then)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _load_checks():
    name = "binbaton_kernel_checks"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parent / "kernel_checks.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


kc = _load_checks()
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DecodeCase, PrefillCase, StoreCase, NormCase = (kc.DecodeCase, kc.PrefillCase, kc.StoreCase,
                                                kc.NormCase)

DECODE_CASES = [
    DecodeCase(1, 2, 1, 64, 1, 16, F32),
    DecodeCase(3, 7, 1, 80, 7, 8, F32),
    DecodeCase(17, 4, 4, 128, 129, 16, F32),
    DecodeCase(1, 14, 2, 96, 1000, 32, F32),
    DecodeCase(3, 2, 2, 64, 129, 1, F32, num_splits=5),
    *(DecodeCase(b, hq, hkv, d, ln, 16, dt)
      for dt in (F16, BF16)
      for b, hq, hkv, d, ln in [(1, 32, 8, 128, 8192), (3, 14, 2, 64, 1000),
                                (17, 7, 1, 80, 129), (64, 32, 8, 128, 2048),
                                (256, 32, 8, 128, 1024), (5, 28, 4, 128, 4097)]),
    DecodeCase(3, 4, 2, 64, 1000, 16, F16, num_splits=3),
    DecodeCase(2, 8, 1, 256, 300, 16, BF16, num_splits=2),
]

PREFILL_CASES = [
    PrefillCase((1,), 2, 1, 64, F32),
    PrefillCase((7, 1, 129), 7, 1, 80, F32),
    PrefillCase((1000,), 2, 1, 64, F32),
    *(PrefillCase(lens, hq, hkv, d, dt)
      for dt in (F16, BF16)
      for lens, hq, hkv, d in [((7, 129, 33), 4, 2, 128), ((129, 1, 7), 7, 1, 96),
                               ((2048, 1, 500, 63), 32, 8, 128), ((4096,), 14, 2, 64)]),
]

STORE_CASES = [
    StoreCase(1, 1, 64, 16, F32, F32),
    StoreCase(17, 2, 80, 16, F32, F32, padding=True),
    StoreCase(129, 4, 128, 16, F16, F16, strided=True),
    StoreCase(7, 7, 96, 1, BF16, BF16, padding=True, strided=True),
    StoreCase(33, 2, 64, 8, F32, F16),
    StoreCase(4096, 8, 128, 16, BF16, BF16),
]

ROPE_CASES = [
    (StoreCase(1, 1, 64, 16, F32, F32), 2),
    (StoreCase(17, 1, 128, 16, F32, F32, padding=True, strided=True), 7),
    (StoreCase(129, 2, 96, 16, F16, F16), 4),
    (StoreCase(2048, 8, 128, 16, BF16, BF16, strided=True), 32),
]

NORM_CASES = [
    NormCase((1, 64), F32, F32, residual=False),
    NormCase((3, 7, 80), F32, F32, residual=True),
    NormCase((17, 1000), F16, F16, residual=True),
    NormCase((3, 96), BF16, BF16, residual=True),
    NormCase((7, 128), BF16, F32, residual=False),
    NormCase((513, 8192), BF16, BF16, residual=True),
    NormCase((4096, 32, 128), BF16, BF16, residual=False),  # q/k norm shape
]


@pytest.fixture(scope="module", autouse=True)
def compiled_kernels():
    from binbaton.kernels import decode_attention, launch

    if launch.is_interpreted(decode_attention._decode_split_kernel):
        pytest.skip("kernels were imported interpreted in this process; run tests/gpu alone")


@pytest.mark.parametrize("case", DECODE_CASES, ids=str)
def test_decode_attention_cuda(case):
    kc.check_decode(case, "cuda")


@pytest.mark.parametrize("case", PREFILL_CASES, ids=str)
def test_prefill_attention_cuda(case):
    kc.check_prefill(case, "cuda")


@pytest.mark.parametrize("case", STORE_CASES, ids=str)
def test_store_kv_cuda(case):
    kc.check_store(case, "cuda")


@pytest.mark.parametrize(("case", "q_heads"), ROPE_CASES, ids=lambda c: str(c))
def test_rope_store_kv_cuda(case, q_heads):
    kc.check_rope_store(case, q_heads, "cuda")


@pytest.mark.parametrize("case", NORM_CASES, ids=str)
def test_rms_norm_cuda(case):
    kc.check_rms_norm(case, "cuda")


def test_cpu_tensors_are_refused_when_compiled():
    from binbaton.kernels import triton_ops

    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        triton_ops.rms_norm(torch.randn(2, 8), torch.randn(8), 1e-6)


def test_bench_quick_on_cuda(tmp_path):
    from binbaton.bench import kernels as bench

    args = bench.build_parser().parse_args(["--device", "cuda", "--quick", "--out",
                                            str(tmp_path)])
    assert bench.main(args) == 0
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert {r["system"] for r in result["rows"]} == set(bench.SYSTEMS)
    assert all(r["achieved_gb_per_s"] > 0 and r["max_abs_diff_vs_twin"] < 3e-2
               for r in result["rows"])
