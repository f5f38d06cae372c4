"""bench/kernels.py end to end on the CPU (--quick: twin vs SDPA, no Triton)."""

import json

import pytest
from binbaton.bench import kernels as bench


def test_quick_cpu_run_writes_json_and_png(tmp_path, capsys):
    args = bench.build_parser().parse_args(["--device", "cpu", "--quick", "--out",
                                            str(tmp_path)])
    assert bench.main(args) == 0
    [path] = tmp_path.glob("*.json")
    assert path.name.endswith("-cpu-decode-attention-quick.json")
    assert path.with_suffix(".png").stat().st_size > 1000
    result = json.loads(path.read_text())
    assert {"device", "model", "workload", "started", "rows"} <= set(result)
    assert result["device"] == "cpu"
    rows = result["rows"]
    assert {(r["system"], r["batch"], r["context"]) for r in rows} == {
        (s, b, c) for s in ("sdpa-padded", "torch-twin") for b in (1, 3) for c in (16, 40)
    }
    for r in rows:
        assert r["time_us"] > 0 and r["copy_gb_per_s"] > 0
        assert r["achieved_gb_per_s"] == pytest.approx(r["bytes"] / r["time_us"] / 1e3,
                                                       rel=1e-2, abs=0.01)
        assert r["max_abs_diff_vs_twin"] < 1e-5  # SDPA and the twin agree in float32
    # useful bytes: K and V rows (2 x B x L x Hkv x D x 4 bytes) + q in + out back
    one = next(r for r in rows if r["batch"] == 3 and r["context"] == 40)
    assert one["bytes"] == 2 * 3 * 40 * 2 * 32 * 4 + 2 * 3 * 4 * 32 * 4
    assert "wrote" in capsys.readouterr().out


def test_triton_is_refused_on_cpu():
    args = bench.build_parser().parse_args(["--device", "cpu", "--systems", "triton"])
    with pytest.raises(ValueError, match="needs CUDA"):
        bench.run(args)


# ---------------------------------------------------------------- bench/gpu_kernels.py

GPU_BENCH_WITHOUT_EXTRAS = """
import sys
for name in ("matplotlib", "pytest", "msgspec", "aiokafka"):
    sys.modules[name] = None  # importing any of them now fails
from binbaton.bench import gpu_kernels
sys.exit(gpu_kernels.main(["--quick", "--device", "cpu", "--out", sys.argv[1]]))
"""


def test_gpu_kernel_section_quick_on_cpu_without_plotting_or_service_packages(tmp_path):
    """The functions for ``binbaton bench gpu``, interpreted on the CPU at tiny sizes, in
    a process where matplotlib, pytest, msgspec and aiokafka cannot be imported."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = os.environ | {"TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", GPU_BENCH_WITHOUT_EXTRAS, str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [path] = tmp_path.glob("*-cpu-gpu-kernels-quick.json")
    result = json.loads(path.read_text())
    assert {"device", "model", "workload", "started", "rows", "warm_up", "accuracy"} <= set(
        result)
    ops = {"rms_norm", "rms_norm_residual", "rms_norm_heads", "rope_store_kv", "store_kv",
           "silu_and_mul", "prefill_attention", "decode_attention (splits 1)",
           "decode_attention (splits 3)"}
    seen = {(r["op"], r["dtype"]) for r in result["accuracy"]}
    assert seen == {(op, d) for op in ops for d in ("float32", "float16", "bfloat16")}
    bound = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-1}  # |values| stay below ~10
    for r in result["accuracy"]:
        assert 0 <= r["max_abs_error"] <= bound[r["dtype"]], r
        assert r["max_abs_value"] > 0.1, r  # the comparison saw real numbers
    rows = result["rows"]
    assert {(r["batch"], r["context"], r["lengths"]) for r in rows} >= {
        (b, c, "uniform") for b in (1, 3) for c in (16, 40)}
    assert [r["lengths"] for r in rows].count("mixed") == 1
    for r in rows:
        assert r["system"] == "triton" and r["time_us"] > 0 and r["copy_gb_per_s"] > 0
        achieved = r["bytes"] / r["time_us"] / 1e3  # GB/s, before the rows' rounding
        assert r["achieved_gb_per_s"] == pytest.approx(achieved, abs=0.01)
        assert r["fraction_of_copy"] == pytest.approx(achieved / r["copy_gb_per_s"],
                                                      rel=1e-2, abs=1e-4)
    assert result["warm_up"]["seconds"] > 0
    assert result["warm_up"]["variants"] == {}  # interpreted: nothing compiles
    assert result["warm_up"]["compiled_while_timing"] == {}


class CountingLaunch:
    """Wraps a kernel: counts its launches, then runs it."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


def test_warm_up_runs_every_op_and_both_decode_paths(monkeypatch):
    """Interpreted on the CPU: every Triton op is called, and decode runs both written
    directly and split (the merge kernel launches)."""
    pytest.importorskip("triton")
    import torch
    from binbaton.bench import gpu_kernels
    from binbaton.kernels import decode_attention, launch, triton_ops

    if not launch.is_interpreted(decode_attention._decode_split_kernel):
        pytest.skip("the CPU path needs the interpreter")
    called: list[str] = []
    for name in triton_ops.__all__:
        original = getattr(triton_ops, name)

        def counting(*args, _name=name, _original=original, **kwargs):
            called.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(triton_ops, name, counting)
    merge = CountingLaunch(decode_attention._decode_merge_kernel)
    monkeypatch.setattr(decode_attention, "_decode_merge_kernel", merge)
    warm = gpu_kernels.warm_up(gpu_kernels.QUICK_SHAPE, torch.float32, max_batch=2,
                               block_size=8, device=torch.device("cpu"))
    assert set(called) == set(triton_ops.__all__)
    assert merge.launches == 1
    assert warm.variants == {} and warm.seconds > 0
