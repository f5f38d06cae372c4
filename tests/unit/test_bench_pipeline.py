"""The pipeline benchmark through the real embedded broker, classifier and worker."""

from __future__ import annotations

import json

import pytest
from binbaton.bench.cli import main
from binbaton.bench.workload import AZURE_CSV
from helpers.data import needs_data


@needs_data(AZURE_CSV)
@pytest.mark.broker
@pytest.mark.slow  # three processes start: ~30 s on 2 idle cores
def test_pipeline_bench_serves_every_request_through_kafka(tiny_llama_dir, tmp_path) -> None:
    argv = ["pipeline", "--model", str(tiny_llama_dir), "--requests", "4", "--batch", "2",
            "--bins", "2", "--scale", "40", "--timeout", "120", "--no-progress",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    (path,) = tmp_path.glob("*-cpu-pipeline-azure.json")
    data = json.loads(path.read_text())
    alone, piped = data["rows"]
    assert (alone["system"], piped["system"]) == ("binbaton", "pipeline")
    assert alone["policy"] == piped["policy"] == "multibin-insert"
    assert alone["bins"] == piped["bins"] == 2 and len(data["workload"]["bin_edges"]) == 1
    for row in (alone, piped):
        assert row["completed"] == 4 and row["failed"] == 0
        assert row["output_tokens"] == round(data["workload"]["output_tokens"]["mean"] * 4)
        assert row["output_tokens_per_s"] * row["elapsed_s"] == pytest.approx(
            row["output_tokens"], rel=0.01
        )
        assert 0 < row["ttft_ms"]["p50"] <= row["latency_ms"]["p99"]
    assert piped["ratio_to_engine_alone"] == pytest.approx(
        alone["elapsed_s"] / piped["elapsed_s"], rel=0.01
    )
    assert piped["peak_memory_mb"] > alone["peak_memory_mb"] / 2  # several processes summed
