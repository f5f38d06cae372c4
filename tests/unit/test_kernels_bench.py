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
