"""``binbaton demo``: `up`, a replayed slice of the Azure trace, and a summary table.

Runs from a fresh clone without network: with no ``--model`` it serves the demo model
committed under ``service/artifacts/demo-model`` when present, else a small random-init
Llama checkpoint (real tokenizer, Hugging Face format) created once under
``.cache/binbaton/``. The trace's lengths are scaled down to this machine; requests
carry ``ignore_eos`` and ``metadata.length_hint`` so every answer has its trace length and
the ``oracle`` predictor routes it (the trace has no prompt text to predict from).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from binbaton.schemas import Result
from binbaton.service.bins import BinBoundaries
from binbaton.service.broker import DEFAULT_PORT, answers_metadata, free_port
from binbaton.service.client import Outgoing, ResultFollower, produce, trace_requests
from binbaton.service.config import kafka_config
from binbaton.service.workload import TRACE_SLICE, load_trace

DEMO_REQUESTS = 200
DEMO_SPAN_S = 20.0  # the replayed arrivals are squeezed into about this many seconds
LENGTH_SCALE = 0.1  # trace output lengths (mean 211 tokens) -> about 21 tokens
CONTEXT_SCALE = 0.02  # trace prompt lengths (mean 1155 tokens) -> about 23 words
MAX_TOKENS_CAP = 96
CONTEXT_CAP = 96
RESULT_TIMEOUT_S = 180.0


def cache_dir() -> Path:
    """``.cache/binbaton`` in a source checkout, else ``~/.cache/binbaton``."""
    checkout = Path(__file__).resolve().parents[1]
    root = checkout if (checkout / "pyproject.toml").exists() else Path.home()
    return root / ".cache" / "binbaton"


def demo_model() -> Path:
    """The committed demo model if there is one, else a cached random tiny Llama."""
    committed = Path(__file__).resolve().parent / "artifacts" / "demo-model"
    if (committed / "config.json").exists():
        return committed
    path = cache_dir() / "tiny-llama"
    if not (path / "config.json").exists():
        from binbaton.workers.engine.tiny import save_tiny_checkpoint

        print(f"creating a small random-init Llama checkpoint in {path}", file=sys.stderr)
        partial = path.with_name(path.name + ".partial")
        save_tiny_checkpoint(partial, "llama", seed=0)
        partial.rename(path)
    return path


def demo_settings(values: Mapping[str, Any], workload: Sequence[Outgoing]) -> dict[str, Any]:
    """The demo's `up` settings: the user's flags, and defaults that suit the demo."""
    settings = dict(values)
    settings["model"] = values.get("model") or str(demo_model())
    if settings.get("predictor") in (None, "auto"):
        settings["predictor"] = "oracle"
    if not values.get("bootstrap_servers"):
        port = values.get("broker_port") or DEFAULT_PORT
        if answers_metadata("127.0.0.1", port):
            port = free_port()
        settings["broker_port"] = port
    if settings.get("workers") is None:
        settings["workers"] = 2
    if settings.get("bin_edges") is None:
        lengths = [int(_hint(message)) for message in workload]
        settings["bin_edges"] = BinBoundaries.equal_mass(lengths, settings.get("bins") or 3).edges
    return settings


def _hint(message: Outgoing) -> str:
    import msgspec

    return msgspec.json.decode(message.value)["metadata"]["length_hint"]


def build_workload(requests: int, time_scale: float | None) -> list[Outgoing]:
    rows = load_trace(TRACE_SLICE, limit=requests)
    span = max(rows[-1].arrival_s, 1e-3)
    scale = time_scale or max(1.0, span / DEMO_SPAN_S)
    return trace_requests(rows, length_scale=LENGTH_SCALE, context_scale=CONTEXT_SCALE,
                          max_tokens_cap=MAX_TOKENS_CAP, context_cap=CONTEXT_CAP,
                          time_scale=scale, ignore_eos=True, id_prefix=f"demo{int(time.time())}")


async def run_demo(values: Mapping[str, Any], stop: asyncio.Event, requests: int | None = None,
                   time_scale: float | None = None) -> int:
    from binbaton.service.supervisor import up

    workload = build_workload(requests or DEMO_REQUESTS, time_scale)
    settings = demo_settings(values, workload)
    print(f"binbaton demo: {len(workload)} requests from {TRACE_SLICE.name}, model "
          f"{settings['model']}, bins {settings['bin_edges']}, {settings['workers']} workers",
          file=sys.stderr)
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    service_stop = asyncio.Event()
    service = asyncio.create_task(up(settings, service_stop, on_ready=ready.set_result))
    try:
        done, _ = await asyncio.wait([service, ready, asyncio.create_task(stop.wait())],
                                     return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            return service.result() if service in done else 130
        results, sent_at, wall = await replay(ready.result(), settings, workload, stop)
    finally:
        service_stop.set()
        with contextlib.suppress(Exception):
            await service
    print(summary(results, sent_at, wall))
    return 0 if len(results) == len(workload) else 1


async def replay(bootstrap: str, settings: Mapping[str, Any], workload: list[Outgoing],
                 stop: asyncio.Event) -> tuple[dict[str, Result], dict[str, float], float]:
    """Send the workload at its pace while collecting results behind a progress bar."""
    from tqdm import tqdm

    kafka = kafka_config({"bootstrap_servers": bootstrap}, client_id="binbaton-demo")
    prefix = settings.get("topic_prefix") or "binbaton"
    sent_at: dict[str, float] = {}
    ids = [m.key.decode() for m in workload if m.key]
    start = time.time()

    def on_sent(message: Outgoing) -> None:
        if message.key:
            sent_at[message.key.decode()] = time.time()

    async with ResultFollower(kafka, f"{prefix}.results", from_beginning=False) as follower:
        sender = asyncio.create_task(
            produce(kafka, f"{prefix}.requests", workload, paced=True, on_sent=on_sent))
        wanted = set(ids)
        with tqdm(total=len(ids), unit="req", desc="results", file=sys.stderr) as bar:
            deadline = time.monotonic() + RESULT_TIMEOUT_S + workload[-1].at_s
            while not wanted <= follower.seen.keys() and not stop.is_set():
                fresh = [r for r in await follower.poll() if r.id in wanted]
                bar.update(len(fresh))
                if time.monotonic() > deadline:
                    print("binbaton demo: timed out waiting for results", file=sys.stderr)
                    break
        await sender
    results = {i: follower.seen[i] for i in ids if i in follower.seen}
    return results, sent_at, time.time() - start


def _percentiles(values_ms: list[float]) -> str:
    if not values_ms:
        return "-"
    p50, p99 = np.percentile(np.asarray(values_ms), [50, 99])
    return f"{p50:8.0f} {p99:8.0f}"


def summary(results: Mapping[str, Result], sent_at: Mapping[str, float], wall_s: float) -> str:
    """The table: throughput, latency and TTFT percentiles, per-bin counts and lengths."""
    ok = [r for r in results.values() if r.status == "ok"]
    tokens = sum(r.usage.completion_tokens for r in ok)
    first = min((sent_at[r.id] for r in ok if r.id in sent_at), default=0.0)
    last = max((r.timings.finished or 0) / 1000 for r in ok) if ok else 0.0
    span = max(last - first, 1e-9)
    latency = [(r.timings.finished or 0) - sent_at[r.id] * 1000 for r in ok if r.id in sent_at]
    ttft = [(r.timings.first_token or 0) - sent_at[r.id] * 1000 for r in ok
            if r.id in sent_at and r.timings.first_token]
    per_bin: dict[int, list[Result]] = defaultdict(list)
    for r in ok:
        per_bin[r.bin if r.bin is not None else -1].append(r)
    lines = [
        "",
        "binbaton demo summary",
        f"  requests        {len(results)} answered, {len(ok)} ok, "
        f"{len(results) - len(ok)} errors  (wall {wall_s:.1f} s)",
        f"  throughput      {tokens / span:8.1f} output tok/s   {len(ok) / span:6.2f} req/s",
        "                       p50      p99  (ms)",
        f"  latency         {_percentiles(latency)}",
        f"  time to 1st tok {_percentiles(ttft)}",
        "  bin   requests   mean predicted   mean actual tokens",
    ]
    for index in sorted(per_bin):
        rows = per_bin[index]
        predicted = np.mean([r.predicted_tokens or 0 for r in rows])
        actual = np.mean([r.usage.completion_tokens for r in rows])
        lines.append(f"  {index:3d}   {len(rows):8d}   {predicted:14.1f}   {actual:18.1f}")
    return "\n".join(lines)
