"""The `binbaton` command line in-process: predict, schema, flags from the environment,
dispatch to other modules, and how `up` splits bins and passes flags to workers."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path

import jsonschema
import pytest
from binbaton.schemas import Request, Result, encode
from binbaton.service import cli
from binbaton.service.classifier import Router
from binbaton.service.config import ClassifierConfig, resolve
from binbaton.service.supervisor import split_bins, worker_argv


def run_cli(argv: list[str], stdin: bytes = b"", monkeypatch: pytest.MonkeyPatch | None = None
            ) -> int:
    if monkeypatch is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    return cli.main(argv)


def test_predict_gives_the_classifier_decision(tiny_llama_dir: Path, capsys,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    requests = [Request(id="a", prompt="the quick brown fox", max_tokens=3),
                Request(id="b", prompt_token_ids=[5, 6], max_tokens=30),
                Request(id="c", prompt="hi", max_tokens=200)]
    lines = b"\n".join(encode(r) for r in requests) + b"\n\n{broken\n"
    monkeypatch.setenv("BINBATON_BIN_EDGES", "4,16")
    code = run_cli(["predict", "--model", str(tiny_llama_dir), "--predictor", "max_tokens"],
                   lines, monkeypatch)
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    router = Router.from_config(ClassifierConfig(model=str(tiny_llama_dir), bin_edges=(4, 16)))
    expected = [{"id": d.request.id, "predicted_tokens": d.predicted_tokens, "bin": d.bin}
                for d in router.decide(requests)]
    assert rows[:3] == expected == [{"id": "a", "predicted_tokens": 3, "bin": 0},
                                    {"id": "b", "predicted_tokens": 30, "bin": 2},
                                    {"id": "c", "predicted_tokens": 200, "bin": 2}]
    assert rows[3]["id"] is None and rows[3]["error"]["code"] == "invalid_json"


def test_schema_validates_requests_and_results(capsys) -> None:
    assert cli.main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    defs = schema["$defs"]
    request = {"$defs": defs, **schema["Request"]}
    result = {"$defs": defs, **schema["Result"]}
    jsonschema.validate({"id": "x", "prompt": "hi", "max_tokens": 4}, request)
    jsonschema.validate(json.loads(encode(Result(id="x", status="ok"))), result)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"id": "x", "prompt": "hi", "top_p": 2}, request)


def test_a_bad_environment_value_fails_loudly(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BINBATON_PARTITIONS", "many")
    assert cli.main(["topics"]) == 2
    assert "$BINBATON_PARTITIONS='many'" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "module"), [("bench", "binbaton.bench.cli"),
                                                 ("train-predictor", "binbaton.service.training")])
def test_bench_and_training_are_dispatched_with_their_argv(
        command: str, module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType(module)
    fake.main = lambda argv: seen.append(argv) or 7  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module, fake)
    assert cli.main([command, "--x", "1"]) == 7
    assert seen == [["--x", "1"]]


def test_bins_are_split_among_workers() -> None:
    assert split_bins(3, 1) == [(0, 1, 2)]
    assert split_bins(3, 2) == [(0, 2), (1,)]
    assert split_bins(3, 3) == [(0,), (1,), (2,)]
    assert split_bins(2, 4) == [(0,), (1,), (0,), (1,)]


def test_workers_get_the_resolved_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    names = cli.COMMAND_FLAGS["up"]
    values = resolve({"model": "/m", "max_batch": "8", "topic_prefix": "p"}, names,
                     {"BINBATON_POLICY": "insert", "BINBATON_DRAIN_TIMEOUT": "3"})
    argv = worker_argv(values, "127.0.0.1:1", (0, 2), "cpu", 0)
    assert argv[1:4] == ["-m", "binbaton.service.cli", "worker"]
    flags = dict(zip(argv[4::2], argv[5::2], strict=True))
    assert flags["--bins"] == "0,2" and flags["--bootstrap-servers"] == "127.0.0.1:1"
    assert flags["--model"] == "/m" and flags["--max-batch"] == "8"
    assert flags["--policy"] == "insert" and flags["--drain-timeout"] == "3.0"
    assert flags["--topic-prefix"] == "p" and flags["--device"] == "cpu"
