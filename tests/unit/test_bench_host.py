"""``binbaton bench host``: the base commit and this tree measured side by side."""

from __future__ import annotations

from binbaton.bench.cli import main
from binbaton.bench.results import read_result


def test_bench_host_measures_the_base_commit_and_this_tree(tmp_path, capsys) -> None:
    # HEAD as the base: any checkout has it (the committed run used the branch's start).
    args = ["host", "--base", "HEAD", "--batches", "2", "--steps", "2", "--warmup", "1",
            "--repeat", "1"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("*-cpu-host.json")
    data = read_result(path)
    assert [(r["batch"], r["version"]) for r in data["rows"]] == [(2, "before"), (2, "after")]
    for row in data["rows"]:
        assert 0 < row["engine_cpu_ms_per_step"] < row["cpu_ms_per_step"]
        assert 0 < row["forward_cpu_ms_per_step"] < row["cpu_ms_per_step"]
        assert row["engine_alone_cpu_ms_per_step"] > 0
    assert data["notes"]["before"].startswith("HEAD (")
    assert set(data["notes"]["ratio_before_over_after"]["2"]) >= {"cpu_ms_per_step",
                                                                   "engine_alone_cpu_ms_per_step"}
    assert path.with_suffix(".png").stat().st_size > 1000
    assert "before / after" in capsys.readouterr().out
