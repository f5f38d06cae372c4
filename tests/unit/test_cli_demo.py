"""The demo's workload and summary table (the full demo runs in `make demo`)."""

from __future__ import annotations

import msgspec
from binbaton.schemas import Request, Result, Timings, Usage
from binbaton.service.demo import build_workload, demo_settings, summary


def test_workload_is_the_trace_scaled_down() -> None:
    workload = build_workload(50, time_scale=None)
    requests = [msgspec.json.decode(m.value, type=Request) for m in workload]
    assert len(requests) == 50 and len({r.id for r in requests}) == 50
    assert all(1 <= r.max_tokens <= 96 and r.ignore_eos for r in requests)
    assert all(r.metadata["length_hint"] == str(r.max_tokens) for r in requests)
    assert workload[-1].at_s <= 20.0 + 1e-6  # squeezed into the demo's span
    settings = demo_settings({"model": "/m", "bootstrap_servers": "h:1", "bins": 3}, workload)
    assert settings["predictor"] == "oracle" and len(settings["bin_edges"]) == 2


def test_summary_reports_throughput_latency_and_bins() -> None:
    def result(i: int, bin: int, tokens: int) -> Result:
        return Result(id=f"r{i}", status="ok", bin=bin, predicted_tokens=tokens,
                      usage=Usage(prompt_tokens=3, completion_tokens=tokens),
                      timings=Timings(first_token=1000 + 50, finished=1000 + 100 * (i + 1)))

    results = {r.id: r for r in [result(0, 0, 4), result(1, 0, 6), result(2, 2, 30)]}
    table = summary(results, {f"r{i}": 1.0 for i in range(3)}, wall_s=1.0)
    assert "3 answered, 3 ok, 0 errors" in table
    assert "133.3 output tok/s" in table  # 40 tokens over 0.3 s
    lines = {line.split()[0]: line.split() for line in table.splitlines()[-2:]}
    assert lines["0"][1:] == ["2", "5.0", "5.0"] and lines["2"][1:] == ["1", "30.0", "30.0"]
