"""``binbaton bench pipeline``: the same workload through Kafka vs the engine alone.

Engine alone: binbaton's Engine in this process, every request added at t = 0.
Pipeline: ``binbaton up`` (embedded broker, classifier, one worker) in a child process;
this process produces every request to ``<prefix>.requests`` at t = 0 and follows
``<prefix>.results`` until each id has its result. Both use the same policy, batch size,
KV budget and bins (the classifier gets the oracle predictor and the engine-only run the
true lengths, with the same equal-mass edges), so the difference is the queueing layer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from binbaton.bench.checkpoint import PRESETS, describe_checkpoint, prepare_checkpoint
from binbaton.bench.engine import (
    add_workload_arguments,
    engine_requests,
    make_engine,
    print_table,
    run_engine,
)
from binbaton.bench.measure import Measurement
from binbaton.bench.memory import PeakMemory
from binbaton.bench.plot import plot_result
from binbaton.bench.results import RESULTS_DIR, BenchResult, now_iso, write_result
from binbaton.bench.workload import (
    BenchRequest,
    Workload,
    build_workload,
)
from binbaton.schemas.messages import Request
from binbaton.schemas.topics import TopicNames
from binbaton.service.classifier.bins import BinBoundaries
from binbaton.service.kafka.broker import free_port
from binbaton.service.kafka.client import ResultFollower, produce, request_message
from binbaton.service.kafka.config import KafkaConfig
from binbaton.workers.engine.config import POLICIES
from tqdm import tqdm

READY_PREFIX = "ready bootstrap="
START_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(parser, default_requests="azure: 256, uniform: 256")
    parser.add_argument("--bins", type=int, default=4)
    parser.add_argument("--policy", default="multibin-insert", choices=POLICIES)
    parser.add_argument("--kv-budget-tokens", type=int, default=None)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1,
                        help="alternate engine-alone and Kafka runs; the fastest of each is kept")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for the Kafka run")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default=None)
    parser.add_argument("--no-progress", action="store_true")


# ---- the service in a child process ------------------------------------------------------


class Service:
    """``binbaton up`` as a child process; stopped with SIGINT (then SIGKILL)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.env = env
        self.process: subprocess.Popen[str] | None = None
        self.bootstrap = ""

    def start(self, timeout: float = START_TIMEOUT_S) -> str:
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=None, stdin=subprocess.DEVNULL,
            text=True, env=self.env,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"binbaton up exited with {self.process.returncode}")
                if not selector.select(timeout=1.0):
                    continue
                line = self.process.stdout.readline().strip()
                if line.startswith(READY_PREFIX):
                    self.bootstrap = line[len(READY_PREFIX) :]
                    return self.bootstrap
        raise TimeoutError(f"binbaton up printed no ready line in {timeout:.0f}s")

    def pids(self) -> list[int]:
        """The service's processes: `up` and its descendants (broker, workers)."""
        if self.process is None:
            return []
        found, frontier = [], [self.process.pid]
        while frontier:
            pid = frontier.pop()
            found.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*"):
                with contextlib.suppress(OSError):
                    frontier += [int(c) for c in (task / "children").read_text().split()]
        return found

    def cpu_seconds(self) -> float:
        """utime + stime of the service's processes (all threads), from /proc/<pid>/stat."""
        ticks = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
        return ticks / os.sysconf("SC_CLK_TCK")

    def reset_peak_memory(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")

    def peak_memory_mb(self) -> float:
        total_kb = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total_kb += int(line.split()[1])
        return total_kb / 1024

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


TOPICS = TopicNames("bench")


def service_argv(
    args: argparse.Namespace, path: Path, edges: tuple[int, ...], port: int, budget: int, n: int
) -> list[str]:
    argv = [
        sys.executable, "-m", "binbaton.service.app.cli", "up",
        "--broker-port", str(port), "--model", str(path), "--bins", str(args.bins),
        "--predictor", "oracle", "--policy", args.policy, "--max-batch", str(args.batch),
        "--kv-budget-tokens", str(budget), "--device", args.device, "--dtype", args.dtype,
        "--partitions", str(args.partitions), "--workers", "1",
        "--max-in-flight", str(n + 1),  # the worker sees the whole queue, as the engine does
        "--topic-prefix", TOPICS.prefix,
    ]
    if edges:
        argv += ["--bin-edges", ",".join(str(e) for e in edges)]
    return argv


def service_env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINBATON_")}
    env["OMP_NUM_THREADS"] = str(threads)
    return env


# ---- the client ------------------------------------------------------------------------


def kafka_request(req: BenchRequest) -> Request:
    return Request(
        id=req.id,
        prompt_token_ids=list(req.prompt_token_ids),
        max_tokens=req.output_tokens,
        ignore_eos=True,
        metadata={"length_hint": str(req.output_tokens)},
    )


async def through_kafka(
    bootstrap: str,
    requests: list[BenchRequest],
    service: Service,
    progress: bool,
    timeout: float,
) -> Measurement:
    kafka = KafkaConfig(bootstrap_servers=bootstrap, client_id="binbaton-bench")
    async with ResultFollower(kafka, TOPICS.results, from_beginning=False) as follower:
        warm = BenchRequest(f"warmup-{requests[0].id}", requests[0].prompt_token_ids[:16], 2)
        await produce(kafka, TOPICS.requests, [request_message(kafka_request(warm))])
        await _wait_for(follower, {warm.id}, False, timeout)
        service.reset_peak_memory()
        cpu0 = service.cpu_seconds()
        t0 = time.time()
        messages = [request_message(kafka_request(r)) for r in requests]
        await produce(kafka, TOPICS.requests, messages)
        results = await _wait_for(follower, {r.id for r in requests}, progress, timeout)
        elapsed = time.time() - t0
        cpu_s = service.cpu_seconds() - cpu0
    ok = [r for r in results.values() if r.status == "ok"]
    return Measurement(
        elapsed_s=elapsed,
        output_tokens=sum(len(r.token_ids) for r in ok),
        ttft_s=[r.timings.first_token / 1000 - t0 for r in ok if r.timings.first_token],
        latency_s=[r.timings.finished / 1000 - t0 for r in ok if r.timings.finished],
        peak_memory_mb=service.peak_memory_mb(),
        failed=len(requests) - len(ok),
        cpu_s=cpu_s,
        extra={"latency_clock": "service timings (unix ms) minus the client's t0"},
    )


async def _wait_for(follower: Any, ids: set[str], progress: bool, timeout: float) -> dict:
    found: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    with tqdm(total=len(ids), desc="pipeline", unit="req", disable=not progress) as bar:
        while len(found) < len(ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"pipeline: {len(found)}/{len(ids)} results in {timeout}s")
            for result in await follower.poll(timeout_ms=200):
                if result.id in ids and result.id not in found:
                    found[result.id] = result
                    bar.update(1)
    return found


# ---- the run ---------------------------------------------------------------------------


def equal_mass_edges(workload: Workload, bins: int) -> tuple[int, ...]:
    return BinBoundaries.equal_mass(workload.output_lengths, bins).edges


def run(args: argparse.Namespace) -> BenchResult:
    if args.batch < 1 or args.bins < 1 or args.repeat < 1:
        raise ValueError("--batch, --bins and --repeat must be >= 1")
    torch.set_num_threads(args.threads)
    started = now_iso()
    preset = args.model if args.model in PRESETS else None
    path = prepare_checkpoint(args.model)
    model_info = describe_checkpoint(path, preset)
    context = int(model_info.get("max_position_embeddings", 2048))
    num = args.requests or 256
    workload = build_workload(
        args.workload, num, int(model_info["vocab_size"]), context, args.seed, args.scale,
        args.lo, args.hi, args.trace,
    )
    requests = list(workload.requests)
    max_len = max(len(r.prompt_token_ids) + r.output_tokens for r in requests)
    budget = args.kv_budget_tokens or args.batch * max_len
    edges = equal_mass_edges(workload, args.bins) if args.policy.startswith("multibin") else ()
    boundaries = BinBoundaries(edges)
    truth = workload.output_lengths
    bins = [boundaries.bin_of(n) for n in truth]
    memory = PeakMemory(args.device)
    progress = not args.no_progress

    engine = make_engine(
        argparse.Namespace(**{**vars(args), "kv_budget_tokens": budget}), path, args.policy,
        max_len,
    )
    service = Service(service_argv(args, path, edges, free_port(), budget, len(requests)),
                      service_env(args.threads))
    alone_runs, piped_runs = [], []
    try:
        bootstrap = service.start()
        for rep in range(args.repeat):  # alternate, so a change in load hits both
            fresh = [dataclasses.replace(r, id=f"{r.id}-r{rep}") for r in requests]
            alone_runs.append(run_engine(engine, engine_requests(fresh, truth, bins), memory,
                                         progress, "engine alone"))
            piped_runs.append(
                asyncio.run(through_kafka(bootstrap, fresh, service, progress, args.timeout))
            )
    finally:
        service.stop()
    alone = min(alone_runs, key=lambda m: m.elapsed_s)
    piped = min(piped_runs, key=lambda m: m.elapsed_s)
    k = max(1, len(edges) + 1)
    rows = (
        alone.to_row("binbaton", args.policy, k, args.batch,
                     elapsed_s_runs=[round(m.elapsed_s, 3) for m in alone_runs]),
        piped.to_row("pipeline", args.policy, k, args.batch,
                     elapsed_s_runs=[round(m.elapsed_s, 3) for m in piped_runs],
                     ratio_to_engine_alone=round(alone.elapsed_s / piped.elapsed_s, 4)),
    )
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    return BenchResult(
        name=args.name or f"pipeline-{args.workload}",
        device=device,
        model=model_info,
        workload={**workload.describe(), "batch": args.batch, "bin_edges": list(edges)},
        started=started,
        rows=rows,
        notes={
            "peak_memory_mb": f"engine alone: {memory.kind}; pipeline: sum of VmHWM over the "
            "service's processes (up/classifier, broker, worker), reset after warm-up",
            "pipeline": "binbaton up (embedded tansu broker, classifier with the oracle "
            "predictor, 1 worker); client produces every request at t=0, follows results",
            "threads": args.threads,
            "kv_budget_tokens": budget,
            "repeats": f"{args.repeat}, alternating; each row is its fastest run",
        },
    )


def main(args: argparse.Namespace) -> int:
    result = run(args)
    path = write_result(result, args.out)
    plot_result(result, path.with_suffix(".png"))
    print_table(result)
    ratio = result.rows[1].output_tokens_per_s / result.rows[0].output_tokens_per_s
    print(f"pipeline / engine alone: {ratio:.3f} (target >= 0.95)")
    print(f"wrote {path} and {path.with_suffix('.png').name}")
    return 0
