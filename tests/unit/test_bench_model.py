"""The Multi-Bin queueing model simulator against its closed forms (arXiv 2412.04504)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from binbaton.bench.cli import main
from binbaton.bench.model import arrivals, closed_form_throughput, simulate


@pytest.mark.parametrize("l_min, l_max", [(0.0, 1.0), (100.0, 1024.0)])
@pytest.mark.parametrize("bins", [1, 2, 4, 8, 16])
def test_simulated_throughput_matches_closed_form(bins: int, l_min: float, l_max: float) -> None:
    rng = np.random.default_rng(0)
    lengths = rng.uniform(l_min, l_max, size=16 * 16 * 250)
    sim = simulate(lengths, lengths, np.zeros(len(lengths)), bins, batch=16)
    closed = closed_form_throughput(16, bins, l_min, l_max)
    assert sim.requests_per_step == pytest.approx(closed, rel=0.02)


def test_closed_form_gains_at_b16_match_the_paper_table() -> None:
    c1 = closed_form_throughput(16, 1, 0.0, 1.0)
    gains = [closed_form_throughput(16, k, 0.0, 1.0) / c1 for k in (2, 4, 8, 16)]
    assert gains == pytest.approx([1.31, 1.54, 1.70, 1.78], abs=0.006)
    assert closed_form_throughput(16, 1, 0.0, 1.0) == pytest.approx(16 / (16 / 17))


def test_static_batch_lasts_as_long_as_its_longest_member() -> None:
    lengths = np.array([5.0, 1.0, 2.0, 9.0])
    sim = simulate(lengths, lengths, np.zeros(4), bins=1, batch=2)
    assert sim.num_batches == 2
    assert sim.makespan == 5.0 + 9.0  # batches (5, 1) then (2, 9), in arrival order
    np.testing.assert_allclose(sim.finish, [5.0, 5.0, 14.0, 14.0])
    two_bins = simulate(lengths, lengths, np.zeros(4), bins=2, batch=2)
    assert two_bins.makespan == 2.0 + 9.0  # short bin (1, 2), long bin (5, 9)


def test_poisson_below_capacity_serves_at_the_arrival_rate() -> None:
    rng = np.random.default_rng(1)
    lengths = rng.uniform(0.0, 1.0, size=20_000)
    rate = 0.8 * closed_form_throughput(16, 1, 0.0, 1.0)
    sim = simulate(lengths, lengths, arrivals(len(lengths), "poisson", rate, rng), 4, 16)
    assert sim.requests_per_step == pytest.approx(rate, rel=0.03)
    assert (sim.latency >= 0).all() and (sim.start >= sim.arrival - 1e-9).all()


def test_bench_model_cli_writes_json_and_png(tmp_path) -> None:
    assert main(["model", "--requests", "4096", "--bins", "1,4", "--out", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("*-cpu-model-uniform-saturate.json")
    assert json_path.with_suffix(".png").stat().st_size > 1000
    data = json.loads(json_path.read_text())
    assert {"device", "model", "workload", "started", "rows"} <= data.keys()
    assert [row["bins"] for row in data["rows"]] == [1, 4]
    assert data["rows"][1]["policy"] == "multibin-static"
    assert data["rows"][1]["sim_over_closed_form"] == pytest.approx(1.0, abs=0.02)


def test_bench_model_rejects_bad_bins(tmp_path, capsys) -> None:
    assert main(["model", "--bins", "0,2", "--out", str(tmp_path)]) == 2
    assert "--bins" in capsys.readouterr().err
