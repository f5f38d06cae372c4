"""``binbaton bench host``: the base commit and this tree measured side by side."""

from __future__ import annotations

from binbaton.bench.cli import main
from binbaton.bench.results import read_result


def test_bench_host_measures_the_base_commit_and_this_tree(tmp_path, capsys) -> None:
    # HEAD as the base: any checkout has it (the committed run used 16d0e76).
    args = ["host", "--base", "HEAD", "--batches", "2", "--steps", "2", "--warmup", "1",
            "--repeat", "1"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("*-cpu-host.json")
    data = read_result(path)
    assert [(r["batch"], r["version"]) for r in data["rows"]] == [
        (2, "before"), (2, "after-eager"), (2, "after-graphs")]
    rows = {r["version"]: r for r in data["rows"]}
    for version in ("before", "after-eager"):  # the forward ran op by op, launching kernels
        row = rows[version]
        assert 0 < row["engine_cpu_ms_per_step"] < row["cpu_ms_per_step"]
        assert 0 < row["forward_cpu_ms_per_step"] < row["cpu_ms_per_step"]
        assert row["launches_per_step"] > 0 and row["graph_replays_per_step"] == 0
    graphs = rows["after-graphs"]  # the decode forward skipped as a replay skips it
    assert graphs["launches_per_step"] == 0 and graphs["graph_replays_per_step"] == 1
    assert graphs["forward_cpu_ms_per_step"] == 0 < graphs["cpu_ms_per_step"]
    # the skipped forward's projections are torch ops too: fewer without it, none are views
    assert 0 < graphs["torch_ops_per_step"] < rows["after-eager"]["torch_ops_per_step"]
    assert data["notes"]["before"].startswith("HEAD (")
    ratios = data["notes"]["ratio_before_over_after"]["2"]
    assert set(ratios) == {"after-eager", "after-graphs"}
    assert ratios["after-graphs"]["cpu_ms_per_step"] > 0
    assert path.with_suffix(".png").stat().st_size > 1000
    assert "before / after" in capsys.readouterr().out
