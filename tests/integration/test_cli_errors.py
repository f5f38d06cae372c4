"""Errors a person can act on: `binbaton` run as a subprocess ends with one line naming the
problem and the fix, exit code 1 (2 for a bad setting), and no traceback unless
--log-level DEBUG. All cases run side by side (each pays the interpreter's start)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from binbaton.service.kafka.broker import free_port

BINBATON = str(Path(sys.executable).with_name("binbaton"))
CUDA_DEVICES = torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]
    code: int
    fragments: tuple[str, ...]  # all in the one line
    env: dict[str, str] = field(default_factory=dict)
    within_s: float = 60.0
    traceback: bool = False


@dataclass(frozen=True)
class Outcome:
    code: int
    stderr: str
    seconds: float


def run(case: Case) -> Outcome:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BINBATON_", "HF_"))}
    env.update(case.env)
    start = time.monotonic()
    done = subprocess.run([BINBATON, *case.argv], capture_output=True, text=True, env=env,
                          timeout=120, stdin=subprocess.DEVNULL)
    return Outcome(done.returncode, done.stderr, time.monotonic() - start)


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something that is not Kafka listens on (and never answers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def check(cases: list[Case]) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = dict(zip([c.name for c in cases], pool.map(run, cases), strict=True))
    wrong = {}
    for case in cases:
        outcome = outcomes[case.name]
        lines = [line for line in outcome.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        ok = (outcome.code == case.code
              and last.startswith(f"binbaton {case.argv[0]}: ")
              and all(fragment in last for fragment in case.fragments)
              and ("Traceback" in outcome.stderr) == case.traceback
              and outcome.seconds < case.within_s)
        if not ok:
            wrong[case.name] = (outcome.code, round(outcome.seconds, 1), outcome.stderr[-600:])
    assert wrong == {}


def test_ports_brokers_and_settings(broker: str, listening: int) -> None:
    """Commands that load no model: a few seconds each."""
    broker_port = broker.rsplit(":", 1)[1]
    nobody = str(free_port())
    check([
        Case("broker port in use by a broker", ["broker", "--broker-port", broker_port], 1,
             (f"a Kafka broker already answers on {broker}", "--broker-port")),
        Case("broker port in use", ["broker", "--broker-port", str(listening)], 1,
             (f"port {listening} on 127.0.0.1 is in use", "give another --broker-port")),
        Case("no broker at --bootstrap-servers",
             ["results", "--bootstrap-servers", f"127.0.0.1:{nobody}"], 1,
             (f"no Kafka broker answers at --bootstrap-servers 127.0.0.1:{nobody}",
              "correct --bootstrap-servers"), within_s=15),
        Case("not Kafka at --bootstrap-servers",
             ["topics", "--bootstrap-servers", f"127.0.0.1:{listening}"], 1,
             (f"no Kafka broker answers at --bootstrap-servers 127.0.0.1:{listening}",),
             within_s=15),
        Case("no embedded broker", ["produce", "--prompt", "hi", "--broker-port", nobody], 1,
             (f"127.0.0.1:{nobody}, the embedded broker's address", "binbaton up"),
             within_s=15),
        Case("bad setting from the environment", ["topics"], 2,
             ("BINBATON_PARTITIONS",), env={"BINBATON_PARTITIONS": "zero"}),
        Case("--bins disagrees with --bin-edges",
             ["topics", "--bins", "3", "--bin-edges", "64", "--bootstrap-servers", broker], 2,
             ("--bins 3 disagrees with --bin-edges 64 (2 bins)", "give 2 edges for 3 bins",
              "or --bins 2")),
        Case("--bins disagrees with --bin-edges in predict",
             ["predict", "--bins", "3", "--bin-edges", "64", "--model", "unused"], 2,
             ("--bins 3 disagrees with --bin-edges 64 (2 bins)",)),
        Case("bin edges out of order", ["predict", "--model", "unused"], 2,
             ("--bin-edges must be increasing positive integers", "got 5,3"),
             env={"BINBATON_BIN_EDGES": "5,3"}),
        Case("--file missing", ["produce", "--file", "/no/such/requests.jsonl",
                                "--broker-port", nobody], 1,
             ("cannot read --file /no/such/requests.jsonl: No such file or directory",
              "give a file of Request JSON lines")),
        Case("--trace not a trace", ["produce", "--trace", __file__, "--broker-port", nobody], 1,
             ("is not an Azure LLM trace CSV (no column TIMESTAMP)", "it needs the columns")),
        Case("no request source, before any broker", ["produce", "--broker-port", nobody], 2,
             ("give exactly one of --prompt, --chat, --file, --trace",)),
        Case("a CUDA device this machine lacks", ["up", "--model", "unused", "--device",
                                                  f"cuda:{CUDA_DEVICES}"], 2,
             (f"--device cuda:{CUDA_DEVICES}: this machine has {CUDA_DEVICES} CUDA device(s)",
              "give --device auto or cpu")),
        Case("triton kernels on the CPU", ["up", "--model", "unused", "--device", "cpu",
                                           "--kernel-backend", "triton"], 2,
             ("--kernel-backend triton needs triton and a CUDA device",
              "give --kernel-backend auto or torch"), env={"TRITON_INTERPRET": "0"}),
        Case("not a port", ["broker", "--broker-port", "70000"], 2,
             ("--broker-port='70000': must be a TCP port, 1 to 65535",)),
        Case("unknown option", ["up", "--bogus"], 2,
             ("unrecognized arguments: --bogus", "`binbaton up --help` lists the options")),
        Case("option without its value", ["worker", "--bins", "0", "--max-batch"], 2,
             ("argument --max-batch: expected one argument", "binbaton worker --help")),
        Case("traceback at --log-level DEBUG",
             ["topics", "--bootstrap-servers", f"127.0.0.1:{nobody}", "--log-level", "DEBUG"],
             1, ("no Kafka broker answers",), traceback=True),
    ])


@pytest.mark.slow
def test_models_that_cannot_load_and_a_metrics_port_in_use(
    broker: str, tiny_llama_dir: Path, tmp_path: Path, listening: int
) -> None:
    """Commands that import torch and transformers (several seconds each on 2 cores)."""
    empty = tmp_path / "empty-model"
    empty.mkdir()
    no_weights = tmp_path / "no-weights"  # config.json and tokenizer, no *.safetensors
    no_tokenizer = tmp_path / "no-tokenizer"  # config.json and weights, no tokenizer
    for folder in (no_weights, no_tokenizer):
        shutil.copytree(tiny_llama_dir, folder)
    for stale in no_weights.glob("*.safetensors*"):
        stale.unlink()
    for stale in no_tokenizer.glob("tokenizer*"):
        stale.unlink()
    not_gguf = tmp_path / "broken.gguf"
    not_gguf.write_bytes(b"not a gguf file")
    nobody = str(free_port())
    kafka = ["--bootstrap-servers", broker, "--topic-prefix", f"t.models.{nobody}"]
    hf_home = str(tmp_path / "hf")
    check([
        Case("model path missing", ["predict", "--model", str(tmp_path / "nowhere")], 1,
             ("model path", "does not exist", "give a checkpoint directory")),
        Case("model directory empty", ["predict", "--model", str(empty)], 1,
             ("is empty", "point the model at")),
        Case("model missing under up", ["up", "--model", str(tmp_path / "nowhere"),
                                        "--broker-port", nobody], 1,
             ("model path", "does not exist")),
        Case("--bins disagrees with --bin-edges under up",
             ["up", "--bins", "3", "--bin-edges", "64", "--model", str(tiny_llama_dir)], 2,
             ("--bins 3 disagrees with --bin-edges 64 (2 bins)", "give 2 edges for 3 bins",
              "or --bins 2")),
        Case("a config's own check under up names the flag",
             ["up", "--model", str(tiny_llama_dir), "--broker-port", nobody], 2,
             ("--kv-memory-fraction ($BINBATON_KV_MEMORY_FRACTION)", "must be in (0, 1]"),
             env={"BINBATON_KV_MEMORY_FRACTION": "2"}),
        Case("KV budget under one block", ["worker", "--bins", "0", "--model", str(tiny_llama_dir),
                                          "--bootstrap-servers", broker, "--topic-prefix",
                                          f"t.kv.{nobody}", "--kv-budget-bytes", "10240"], 2,
             ("holds 10 tokens, less than one block of 16",
              "give --kv-budget-tokens of at least 16")),
        Case("KV budget tokens under one block under up",
             ["up", "--model", str(tiny_llama_dir), "--broker-port", nobody,
              "--kv-budget-tokens", "10"], 2,
             ("--kv-budget-tokens ($BINBATON_KV_BUDGET_TOKENS)", "--block-size",
              "kv_budget_tokens 10 holds less than one block")),
        Case("no weights under up", ["up", "--model", str(no_weights), "--broker-port", nobody],
             1, ("has a config.json but no *.safetensors weights",)),
        Case("no weights under worker", ["worker", "--bins", "0", "--model", str(no_weights),
                                         *kafka], 1,
             ("has a config.json but no *.safetensors weights",)),
        Case("no tokenizer under classifier", ["classifier", "--model", str(no_tokenizer),
                                               *kafka], 1,
             (f"cannot load the tokenizer of {no_tokenizer}", "tokenizer.json")),
        Case("not a gguf under up", ["up", "--model", str(not_gguf), "--broker-port", nobody],
             1, (f"{not_gguf} is not a GGUF file", "give a complete, valid .gguf file")),
        Case("not a gguf under worker", ["worker", "--bins", "0", "--model", str(not_gguf),
                                         *kafka], 1,
             (f"cannot read the model config of {not_gguf}", "valid .gguf file")),
        Case("--max-model-len over the model's context", ["worker", "--bins", "0", "--model",
                                                          str(tiny_llama_dir), *kafka,
                                                          "--max-model-len", "999999"], 2,
             ("--max-model-len 999999 exceeds the model's context", "give at most")),
        Case("hub id, HF_HUB_OFFLINE", ["predict", "--model", "someone/no-such-model"], 1,
             ("not in the Hugging Face cache", "HF_HUB_OFFLINE is set", "give a local"),
             env={"HF_HUB_OFFLINE": "1", "HF_HOME": hf_home}),
        Case("hub id, hub out of reach", ["predict", "--model", "someone/no-such-model"], 1,
             ("http://127.0.0.1:1 cannot be reached", "give a local"),
             env={"HF_ENDPOINT": "http://127.0.0.1:1", "HF_HOME": hf_home}, within_s=40),
        Case("metrics port in use", ["classifier", "--model", str(tiny_llama_dir),
                                     "--bootstrap-servers", broker, "--topic-prefix",
                                     f"t.metrics.{nobody}", "--metrics-port", str(listening)],
             1, (f"metrics port {listening}", "is in use", "--metrics-port")),
    ])


def test_clients_name_what_is_missing(broker: str) -> None:
    """`results` says which ids got no result in time; `results` and `produce` say that
    their topic is missing (produce would otherwise create it, and nothing reads it)."""
    prefix = f"t.results.{free_port()}"
    subprocess.run([BINBATON, "topics", "--bootstrap-servers", broker, "--topic-prefix", prefix],
                   check=True, capture_output=True, timeout=60)
    check([
        Case("no result in time", ["results", "--id", "nope", "--timeout", "1",
                                   "--bootstrap-servers", broker, "--topic-prefix", prefix], 1,
             ("no result for nope within --timeout", "check the id")),
        Case("no results topic", ["results", "--bootstrap-servers", broker, "--topic-prefix",
                                  f"{prefix}.absent"], 1,
             (f"topic {prefix}.absent.results does not exist", "check --topic-prefix")),
        Case("no requests topic", ["produce", "--prompt", "hi", "--bootstrap-servers", broker,
                                   "--topic-prefix", f"{prefix}.absent"], 1,
             (f"topic {prefix}.absent.requests does not exist", "`binbaton up`")),
    ])
