"""``binbaton bench kernels`` through the bench CLI, and ``bench report`` on its file."""

from __future__ import annotations

import json

import pytest
from binbaton.bench.cli import main
from binbaton.bench.results import read_result


def test_bench_cli_runs_kernels_and_reports_their_rows(tmp_path, capsys) -> None:
    assert main(["kernels", "--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("*-cpu-decode-attention-quick.json")
    assert path.with_suffix(".png").stat().st_size > 1000
    data = read_result(path)  # kernel rows (context, achieved_gb_per_s, ...) are accepted
    assert {r["system"] for r in data["rows"]} == {"sdpa-padded", "torch-twin"}
    assert all(r["achieved_gb_per_s"] > 0 and r["context"] in (16, 40) for r in data["rows"])
    capsys.readouterr()

    assert main(["report", str(path)]) == 0
    table = capsys.readouterr().out
    assert "| system | batch | context | time µs | achieved GB/s |" in table
    assert table.count("| torch-twin | ") == 4 and table.count("| sdpa-padded | ") == 4


def test_read_result_rejects_files_that_are_not_results(tmp_path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"device": "cpu", "rows": []}))
    with pytest.raises(ValueError, match="missing"):
        read_result(path)
    base = {"device": "cpu", "model": {}, "workload": {}, "started": "2026-11-22T00:00:00"}
    path.write_text(json.dumps({**base, "rows": [{"system": "triton", "batch": 1}]}))
    with pytest.raises(ValueError, match="row 0 lacks"):
        read_result(path)
    assert main(["report", str(path)]) == 2  # a clear error, not a traceback
