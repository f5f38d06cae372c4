"""``binbaton bench gpu``: every section at toy size on the CPU (the torch backend, the
Triton interpreter for the kernels and the exactness check), its deadline, and its import
path without the packages a GPU machine lacks."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from binbaton.bench import gpu, gpu_engine


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("gpu-quick")
    assert gpu.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    [path] = out.glob("*-cpu-gpu.json")
    assert path.with_suffix(".png").stat().st_size > 1000
    return json.loads(path.read_text())


def test_quick_run_has_every_section(quick_run: dict) -> None:
    sections = quick_run["sections"]
    assert list(sections) == list(gpu.SECTIONS)
    assert all(s["status"] == "ok" for s in sections.values()), sections
    assert quick_run["quick"] and quick_run["versions"]["torch"] != "absent"


def test_quick_kernels_compare_every_op_and_time_decode(quick_run: dict) -> None:
    kernels = quick_run["sections"]["kernels"]
    ops = {r["op"] for r in kernels["accuracy"]}
    assert {"rms_norm", "rope_store_kv", "silu_and_mul", "prefill_attention",
            "decode_attention (splits 3)"} <= ops
    assert {r["dtype"] for r in kernels["accuracy"]} == {"bfloat16", "float16", "float32"}
    assert all(r["max_abs_error"] <= 0.05 * max(1.0, r["max_abs_value"])
               for r in kernels["accuracy"])
    assert {r["lengths"] for r in kernels["rows"]} == {"uniform", "mixed"}


def test_quick_exactness_equal_tokens_on_two_architectures(quick_run: dict) -> None:
    exact = quick_run["sections"]["exactness"]
    assert exact["passed"]
    assert {(r["arch"], r["triton_vs"]) for r in exact["rows"]} == {
        (a, o) for a in gpu_engine.EXACTNESS_ARCHS for o in ("torch", "hf")}


def test_quick_engine_runs_every_system_on_the_same_requests(quick_run: dict) -> None:
    engine = quick_run["sections"]["engine"]
    systems = ("binbaton insert, graphs", "binbaton insert, eager", "hf-continuous",
               "hf-generate")
    assert [(r["batch"], r["system"]) for r in engine["rows"]] == [
        (b, s) for b in sorted(quick_run["batches"], reverse=True) for s in systems]
    for batch in quick_run["batches"]:
        expected = sum(r.output_tokens for r in gpu_engine.workload(
            2 * batch, 500, quick=True, seed=batch))
        for row in engine["rows"]:
            if row["batch"] == batch:
                assert row["output_tokens"] == expected and row["failed"] == 0, row
                assert row["output_tokens_per_s"] > 0
    assert not engine["skipped"]


def test_quick_profile_counts_a_full_batch(quick_run: dict) -> None:
    prof = quick_run["sections"]["profile"]
    assert prof["batch"] == max(quick_run["batches"]) and prof["step_ms_untraced"] > 0
    assert prof["aten_ops_per_step"] > 0
    assert prof["gpu_busy_fraction"] is None  # no device events on the CPU


def test_deadline_skips_sections_and_still_writes_the_file(tmp_path) -> None:
    args = ["--quick", "--device", "cpu", "--out", str(tmp_path), "--deadline-s", "0"]
    assert gpu.main(args) == 0
    [path] = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    assert {s["status"] for s in data["sections"].values()} == {"skipped"}


def test_a_section_past_its_budget_times_out() -> None:
    def slow(ctx: object) -> dict:
        time.sleep(5)
        return {}

    started = time.monotonic()
    section = gpu._run_section(slow, None, 0.2)
    assert section["status"] == "timeout" and time.monotonic() - started < 2


def test_targets_and_busy_union() -> None:
    assert gpu_engine._union([(0, 2), (1, 3), (5, 6), (5.5, 5.8)]) == 4
    result = {"sections": {
        "kernels": {"rows": [{"batch": 256, "context": 1024, "lengths": "uniform",
                              "fraction_of_copy": 0.75}]},
        "engine": {"rows": [
            {"batch": 256, "system": "binbaton insert, graphs", "output_tokens_per_s": 31000},
            {"batch": 256, "system": "hf-continuous", "output_tokens_per_s": 31000 / 1.4},
            {"batch": 256, "system": "hf-generate", "output_tokens_per_s": 5000}]},
        "profile": {"gpu_busy_fraction": 0.81}}}
    found = gpu.targets(result)
    assert {k: v["met"] for k, v in found.items()} == {
        "decode_attention_b256_ctx_ge_1024_min_fraction_of_copy": True,
        "b256_insert_graphs_over_hf-continuous": False,
        "b256_insert_graphs_over_hf-generate": True,
        "b256_output_tokens_per_s": True, "gpu_busy_fraction": True}


def test_trace_counts_read_launches_syncs_and_device_time() -> None:
    from types import SimpleNamespace as Event

    def event(name: str, device: str = "DeviceType.CPU", start: float = 0, end: float = 0):
        return Event(name=name, device_type=device, time_range=Event(start=start, end=end))

    events = [event("cudaGraphLaunch"), event("cudaGraphLaunch"), event("cuLaunchKernelEx"),
              event("cudaStreamSynchronize"), event("aten::argmax"),
              event("kernel_a", "DeviceType.CUDA", 0, 60), event("kernel_b", "DeviceType.CUDA",
                                                                   50, 80)]
    counts = gpu_engine._trace_counts(events, steps=2, wall_us=100.0)
    assert counts["graph_launches_per_step"] == 1 and counts["kernel_launches_per_step"] == 0.5
    assert counts["host_syncs_per_step"] == 0.5 and counts["aten_ops_per_step"] == 0.5
    assert counts["gpu_busy_fraction"] == 0.8 and counts["gpu_busy_us_per_step"] == 40


BLOCKED = ("msgspec", "aiokafka", "opentelemetry", "pytest", "matplotlib")


def test_imports_and_help_without_the_packages_a_gpu_machine_lacks(tmp_path) -> None:
    program = f"""
import runpy, sys
for name in {BLOCKED!r}:
    sys.modules[name] = None  # import raises ImportError
import binbaton.bench.gpu as gpu
assert gpu.plot({{"sections": {{}}, "device": "cpu", "started": "x"}}, None) is None
from binbaton.service.app.cli import main
try:
    main(["bench", "gpu", "--help"])
except SystemExit as exc:
    assert exc.code == 0, exc.code
sys.argv = ["binbaton.bench.gpu", "--help"]
try:
    runpy.run_module("binbaton.bench.gpu", run_name="__main__")
except SystemExit as exc:
    assert exc.code == 0, exc.code
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r}
                and sys.modules[m] is not None)
assert not loaded, loaded
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("binbaton bench gpu") >= 2 and done.stdout.endswith("ok\n")


def test_run_script_runs_the_check_from_a_package_shim(tmp_path) -> None:
    """bench/run_gpu.sh, as on a GPU machine where binbaton is not installed."""
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(["bash", "bench/run_gpu.sh", str(tmp_path), "--help"], cwd=root,
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "binbaton bench gpu" in (tmp_path / "bench-gpu.log").read_text()
