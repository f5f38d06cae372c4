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
from binbaton.schemas.codec import encode
from binbaton.schemas.messages import Request, Result
from binbaton.service.app import cli
from binbaton.service.app.commands import predict
from binbaton.service.app.flags import resolve
from binbaton.service.app.supervisor import split_bins, spread_topics, worker_argv, worker_env
from binbaton.service.classifier.config import ClassifierConfig
from binbaton.service.classifier.router import Router
from binbaton.service.kafka.topics import TopicsConfig
from helpers.fakes import ExplodingPredictor


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
    router = Router.from_config(ClassifierConfig(model=str(tiny_llama_dir), bin_edges=(4, 16),
                                                 predictor="max_tokens"))
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


@pytest.mark.parametrize(("argv", "line"), [
    (["frob"], "binbaton: argument COMMAND: invalid choice: 'frob'"),
    ([], "binbaton: the following arguments are required: COMMAND"),
    (["schema", "--bogus"], "binbaton schema: unrecognized arguments: --bogus"),
    (["results", "--count", "x"], "binbaton results: argument --count: invalid int value: 'x'"),
])
def test_a_command_line_that_does_not_parse_is_one_line(argv: list[str], line: str,
                                                        capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(line) and "--help` lists the options" in err


@pytest.mark.parametrize(("command", "module"), [
    ("bench", "binbaton.bench.cli"),
    ("train-predictor", "binbaton.service.app.commands.train_predictor")])
def test_bench_and_training_are_dispatched_with_their_argv(
        command: str, module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType(module)
    fake.main = lambda argv: seen.append(argv) or 7  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module, fake)
    assert cli.main([command, "--x", "1"]) == 7
    assert seen == [["--x", "1"]]


def test_every_worker_serves_every_bin_and_each_bin_has_a_partition_per_worker() -> None:
    assert split_bins(3, 1) == [(0, 1, 2)]
    assert split_bins(3, 2) == [(0, 1, 2), (0, 1, 2)]
    assert split_bins(2, 4) == [(0, 1)] * 4
    topics = TopicsConfig(num_bins=3, partitions=2)
    assert spread_topics(topics, 2, fresh=True) == topics
    spread = spread_topics(topics, 4, fresh=True)
    assert spread.bin_partitions == 4
    assert (spread.requests_partitions, spread.results_partitions) == (2, 2)
    assert spread_topics(topics, 4, fresh=False) == topics  # existing topics are kept


def test_workers_get_the_resolved_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = cli.command_flags("up")
    values = resolve({"model": "/m", "max_batch": "8", "topic_prefix": "p"}, flags,
                     {"BINBATON_POLICY": "insert", "BINBATON_DRAIN_TIMEOUT": "3"})
    argv = worker_argv(values, "127.0.0.1:1", (0, 2), "cpu", 0)
    assert argv[1:4] == ["-m", "binbaton.service.app.cli", "worker"]
    flags = dict(zip(argv[4::2], argv[5::2], strict=True))
    assert flags["--bins"] == "0,2" and flags["--bootstrap-servers"] == "127.0.0.1:1"
    assert flags["--model"] == "/m" and flags["--max-batch"] == "8"
    assert flags["--policy"] == "insert" and flags["--drain-timeout"] == "3.0"
    assert flags["--topic-prefix"] == "p" and flags["--device"] == "cpu"


class ChunkedStream:
    """A pipe whose writer is slow: each read1 returns what one write put in."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)

    def read1(self, size: int = -1) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def test_stdin_lines_come_in_batches_of_at_most_the_size() -> None:
    lines = [f'{{"n": {i}}}'.encode() for i in range(600)]
    batches = list(predict.line_batches(io.BytesIO(b"\n".join(lines) + b"\n"), 256))
    assert [len(b) for b in batches] == [256, 256, 88]
    assert [line for batch in batches for line in batch] == lines
    # a read that ends a line ends a batch; one that ends mid-line waits for the rest
    slow = ChunkedStream([b"a\nb\n", b"c\n\n  \nd", b"d\ne", b"\n", b"f"])
    assert list(predict.line_batches(slow, 256)) == [[b"a", b"b"], [b"c", b"dd", b"e"], [b"f"]]
    assert list(predict.line_batches(ChunkedStream([b"a\nb\nc\nd"]), 2)) == [[b"a", b"b"],
                                                                         [b"c", b"d"]]


def test_predict_decides_a_batch_at_once_in_order_and_survives_bad_lines(
        tiny_llama_dir: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    router = Router.from_config(ClassifierConfig(model=str(tiny_llama_dir), bin_edges=(4, 16),
                                                 predictor="max_tokens"))
    calls: list[int] = []
    decide = router.decide
    monkeypatch.setattr(router, "decide", lambda requests, timer=None: calls.append(len(requests))
                        or decide(requests, timer))
    monkeypatch.setattr(Router, "from_config", classmethod(lambda cls, config: router))
    good = [encode(Request(id=f"g{i}", prompt="hello there", max_tokens=i + 1)) for i in range(30)]
    lines = [*good[:10], b"{broken", *good[10:20], b'{"id": "x", "prompt": ""}', *good[20:]]
    assert run_cli(["predict", "--model", str(tiny_llama_dir)], b"\n".join(lines), monkeypatch) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert calls == [30]  # the 30 valid lines were decided in one batch
    assert len(rows) == 32
    assert [r["id"] for r in rows] == [f"g{i}" for i in range(10)] + [None] + [
        f"g{i}" for i in range(10, 20)] + ["x"] + [f"g{i}" for i in range(20, 30)]
    assert rows[10]["error"]["code"] == "invalid_json" and "error" in rows[21]
    assert rows[0] == {"id": "g0", "predicted_tokens": 1, "bin": 0}
    assert rows[-1] == {"id": "g29", "predicted_tokens": 30, "bin": 2}

    router.predictor = ExplodingPredictor()  # a bug on one line: that line only fails
    rows = predict.predict_rows(router, [good[0], encode(Request(id="b", prompt="boom")), good[1]])
    assert [r["id"] for r in rows] == ["g0", "b", "g1"]
    assert rows[1]["error"]["code"] == "internal" and "bin" in rows[0] and "bin" in rows[2]


def test_worker_env_shares_the_cores_and_quiets_loading_bars(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    env = worker_env(2, "cpu")
    assert env["TQDM_DISABLE"] == "1" and int(env["OMP_NUM_THREADS"]) >= 1
    monkeypatch.setenv("TQDM_DISABLE", "0")  # a user's choice stands
    assert worker_env(2, "cpu")["TQDM_DISABLE"] == "0"
