"""The engine benchmark end to end on a tiny checkpoint: every system, the results format."""

from __future__ import annotations

import json

import pytest
from binbaton.bench.cli import main
from binbaton.bench.engine import SystemSpec, parse_systems
from binbaton.bench.workload import AZURE_CSV
from helpers.data import needs_data

ROW_FIELDS = {
    "system",
    "policy",
    "bins",
    "batch",
    "output_tokens_per_s",
    "requests_per_s",
    "ttft_ms",
    "latency_ms",
    "peak_memory_mb",
}


@needs_data(AZURE_CSV)
def test_engine_bench_writes_every_system_in_the_design_format(tiny_llama_dir, tmp_path) -> None:
    systems = (
        "hf-generate,hf-continuous,static,multibin-static:2,insert,multibin-insert:2@predicted"
    )
    argv = ["engine", "--model", str(tiny_llama_dir), "--requests", "6", "--batch", "3",
            "--scale", "40", "--systems", systems, "--predictor", "max_tokens",
            "--step-cost", "1,2", "--no-progress", "--out", str(tmp_path)]
    assert main(argv) == 0
    (path,) = tmp_path.glob("*-cpu-engine-azure.json")
    assert path.with_suffix(".png").stat().st_size > 1000
    data = json.loads(path.read_text())
    assert data["device"] == "cpu"
    assert data["started"][:10] == path.name[:10]
    assert data["model"]["num_hidden_layers"] == 2
    assert data["workload"]["requests"] == 6 and data["workload"]["scale"] == 40
    rows = data["rows"]
    assert [(r["system"], r["policy"], r["bins"]) for r in rows] == [
        ("hf-generate", "", 1),
        ("hf-continuous", "", 1),
        ("binbaton", "static", 1),
        ("binbaton", "multibin-static", 2),
        ("binbaton", "insert", 1),
        ("binbaton", "multibin-insert", 2),
    ]
    expected_tokens = round(data["workload"]["output_tokens"]["mean"] * 6)
    for row in rows:
        assert row.keys() >= ROW_FIELDS
        assert row["batch"] == 3 and row["completed"] == 6 and row["failed"] == 0
        assert "output_tokens_mismatch" not in row  # every system produced the forced lengths
        assert row["output_tokens"] == expected_tokens
        produced = row["output_tokens_per_s"] * row["elapsed_s"]
        assert produced == pytest.approx(expected_tokens, rel=0.01)
        assert 0 < row["ttft_ms"]["p50"] <= row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
        assert row["peak_memory_mb"] > 0
    assert rows[-1]["lengths"] == "predicted" and data["notes"]["predictor"] == "max_tokens"
    assert set(data["notes"]["decode_step_ms_by_batch"]) == {"1", "2"}


def test_system_specs_parse_and_reject_nonsense() -> None:
    assert parse_systems("static, multibin-insert:8@predicted") == [
        SystemSpec("static"),
        SystemSpec("multibin-insert", 8, "predicted"),
    ]
    assert SystemSpec.parse("multibin-static").bins == 4
    for bad in ("turbo", "insert:4", "multibin-static:0", "static@psychic"):
        with pytest.raises(ValueError):
            SystemSpec.parse(bad)


def test_engine_bench_reports_bad_arguments(tmp_path, capsys) -> None:
    assert main(["engine", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "--model" in capsys.readouterr().err


def test_fastest_of_repeated_runs_is_reported_with_every_runs_time() -> None:
    from binbaton.bench.engine import fastest
    from binbaton.bench.results import Percentiles, Row

    def run(elapsed: float) -> Row:
        p = Percentiles(1.0, 2.0)
        return Row("binbaton", "insert", 1, 4, 10 / elapsed, 1 / elapsed, p, p, 1.0,
                   {"elapsed_s": elapsed})

    best = fastest([run(3.0), run(2.0), run(4.0)])
    assert best.output_tokens_per_s == 5.0
    assert best.extra["elapsed_s_runs"] == [3.0, 2.0, 4.0]
