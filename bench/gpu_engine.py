"""The engine sections of ``binbaton bench gpu``: exactness with the compiled kernels,
output tokens per second against Hugging Face, and one profiled decode step.

    exactness(ctx)   -> float32 greedy tokens: triton backend == torch backend == HF generate
    throughput(ctx)  -> output tok/s: binbaton insert (CUDA graphs on/off), HF continuous
                        batching, HF static generate, at each batch size
    profile(ctx)     -> one traced window of decode steps: GPU-busy fraction, kernel
                        launches, graph launches and host syncs per step

Models are random checkpoints built in-process (``workers/engine/tiny.py``'s configs and
tokenizer): two tiny architectures for exactness, a Qwen2.5-0.5B-shaped Qwen2 (24 layers,
hidden 896, 14 heads, 2 KV heads, vocabulary 151936) for throughput and the profile. In
``quick`` mode every model and workload is toy-sized so the CPU runs each section in
seconds (torch backend; the Triton backend under the interpreter for exactness).
Nothing here imports matplotlib, pytest, msgspec, aiokafka or OpenTelemetry.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from binbaton.bench import huggingface
from binbaton.bench.gpu_kernels import warm_up
from binbaton.bench.memory import PeakMemory
from binbaton.bench.workload import BenchRequest
from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.engine import Engine
from binbaton.workers.engine.request import GenerationRequest, SamplingParams
from binbaton.workers.engine.tiny import SAMPLE_TEXT, build_tokenizer, tiny_config
from transformers import AutoModelForCausalLM, GenerationConfig

QWEN_SHAPE: dict[str, Any] = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, max_position_embeddings=4096, initializer_range=0.02,
)
QWEN_VOCAB = 151936
QUICK_SHAPE: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512,
)
EXACTNESS_ARCHS = ("llama", "qwen3")  # rope scaling, q/k norm and head_dim != hidden / heads


@dataclass
class Context:
    """What every section sees: device, sizes, a scratch folder, the section's deadline."""
    device: torch.device
    quick: bool
    workdir: Path
    batches: tuple[int, ...]
    dtype: str = "bfloat16"  # the throughput model's
    deadline: float = float("inf")  # time.monotonic() by which the section must end
    log: Callable[[str], None] = print
    partial: dict[str, Any] = field(default_factory=dict)  # kept if the section is cut short

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def save_random_checkpoint(path: Path, arch: str, vocab_size: int | None, seed: int = 0,
                           **overrides: Any) -> Path:
    """A random ``arch`` checkpoint (bfloat16 weights when ``vocab_size`` is given, the
    tiny tokenizer's vocabulary and float32 otherwise) with the tiny tokenizer. Ids past
    the tokenizer's vocabulary are valid model inputs and decode to nothing."""
    if (path / "config.json").exists():
        return path
    tokenizer = build_tokenizer([SAMPLE_TEXT] * 4, vocab_size=1000)
    config = tiny_config(arch, vocab_size=vocab_size or len(tokenizer), **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)  # float32 on the CPU
    if vocab_size is not None:
        model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=[config.eos_token_id],
        pad_token_id=config.pad_token_id)
    partial = path.with_name(path.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(path)
    return path


def _engine(path: Path, ctx: Context, dtype: str, batch: int, max_len: int, **extra: Any) -> Any:
    settings: dict[str, Any] = dict(
        model=str(path), device=str(ctx.device), dtype=dtype, policy="insert",
        max_batch=batch, kv_budget_tokens=batch * max_len, max_model_len=max_len,
    )
    return Engine(EngineConfig(**(settings | extra)))


# ------------------------------------------------------------------------ exactness


def exactness(ctx: Context) -> dict[str, Any]:
    """Float32 greedy tokens of a staggered-length batch (more requests than rows, so
    sequences join mid-flight): the Triton backend (compiled on CUDA, with CUDA graphs;
    the interpreter on the CPU) against the torch backend and HF generate per request."""
    count, longest = (3, 4) if ctx.quick else (24, 48)
    rng = random.Random(0)
    rows = []
    for arch in EXACTNESS_ARCHS:
        path = save_random_checkpoint(ctx.workdir / f"exact-{arch}", arch, None)
        requests = [GenerationRequest(
            id=f"{arch}-{i}",
            prompt_token_ids=tuple(rng.randrange(3, 500)
                                   for _ in range(rng.randint(1, 12 if ctx.quick else 80))),
            sampling=SamplingParams(max_tokens=rng.randint(1, longest)),
        ) for i in range(count)]
        tokens = {}
        for backend in ("triton", "torch"):
            engine = _engine(path, ctx, "float32", max(2, count // 3), 256,
                             kernel_backend=backend)
            tokens[backend] = {o.id: list(o.token_ids) for o in engine.generate(requests)}
            del engine
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model = model.to(ctx.device).eval()  # type: ignore[arg-type]
        with torch.inference_mode():
            tokens["hf"] = {}
            for r in requests:
                ids = torch.tensor([r.prompt_token_ids], device=ctx.device)
                out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=r.sampling.max_tokens)
                tokens["hf"][r.id] = out[0, ids.shape[1]:].tolist()
        del model
        for other in ("torch", "hf"):
            wrong = [rid for rid in tokens["triton"] if tokens["triton"][rid] != tokens[other][rid]]
            rows.append({"arch": arch, "triton_vs": other, "requests": count,
                         "equal": count - len(wrong), "first_difference": None if not wrong else
                         {"id": wrong[0], "triton": tokens["triton"][wrong[0]],
                          other: tokens[other][wrong[0]]}})
        ctx.log(f"exactness {arch}: " + ", ".join(
            f"triton == {r['triton_vs']} {r['equal']}/{r['requests']}" for r in rows[-2:]))
    return {"rows": rows, "passed": all(r["equal"] == r["requests"] for r in rows),
            "kernel_backend": "triton compiled, CUDA graphs" if ctx.cuda
            else "triton interpreter (CPU), eager"}


# ------------------------------------------------------------------------ throughput


def workload(count: int, vocab: int, quick: bool, seed: int = 0) -> list[BenchRequest]:
    """``count`` requests: prompts of 16-256 tokens, outputs forced to 16-384 tokens,
    uniform (quick: 4-12 and 2-10)."""
    rng = random.Random(seed)
    prompt, output = ((4, 12), (2, 10)) if quick else ((16, 256), (16, 384))
    return [BenchRequest(
        id=f"w{i}",
        prompt_token_ids=tuple(rng.randrange(3, vocab) for _ in range(rng.randint(*prompt))),
        output_tokens=rng.randint(*output),
    ) for i in range(count)]


def throughput_model(ctx: Context) -> Path:
    if ctx.quick:
        return save_random_checkpoint(ctx.workdir / "model-quick", "qwen2", None, **QUICK_SHAPE)
    return save_random_checkpoint(ctx.workdir / "qwen2.5-0.5b-shape", "qwen2", QWEN_VOCAB,
                                  **QWEN_SHAPE)


def throughput(ctx: Context) -> dict[str, Any]:
    """Every system on the same ``2 x batch`` requests, all submitted at t = 0, at each
    batch size; a system is skipped when the section's time is nearly spent."""
    start = time.monotonic()
    path = throughput_model(ctx)
    build_s = time.monotonic() - start
    max_len = 64 if ctx.quick else 1024
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    ctx.partial.update(rows=rows, skipped=skipped)
    memory = PeakMemory(str(ctx.device))
    systems: list[tuple[str, Callable[[list[BenchRequest], int], dict[str, Any]]]] = [
        ("binbaton insert, graphs", lambda reqs, b: _binbaton(ctx, path, reqs, b, max_len, True)),
        ("binbaton insert, eager", lambda reqs, b: _binbaton(ctx, path, reqs, b, max_len, False)),
        ("hf-continuous", lambda reqs, b: _hf(ctx, path, reqs, b, "continuous", memory)),
        ("hf-generate", lambda reqs, b: _hf(ctx, path, reqs, b, "generate", memory)),
    ]
    vocab = 500 if ctx.quick else QWEN_VOCAB
    for batch in sorted(ctx.batches, reverse=True):  # the targets are read at the largest
        requests = workload(2 * batch, vocab, ctx.quick, seed=batch)
        for name, run in systems:
            if ctx.left() < (1 if ctx.quick else 20):
                skipped.append(f"{name} at batch {batch}: section time spent")
                continue
            row = {"system": name, "batch": batch, "requests": len(requests)}
            rows.append(row)
            try:
                row.update(run(requests, batch))
            except Exception as exc:  # recorded; the other systems still run
                row["error"] = f"{type(exc).__name__}: {exc}"
                ctx.log(f"batch {batch:4d} {name:24s} failed: {row['error']}")
                continue
            finally:
                _free(ctx)  # the last system's model, cache and graph pool
            ctx.log(f"batch {batch:4d} {name:24s} {row['output_tokens_per_s']:10.1f} tok/s "
                    f"({row['output_tokens']} tokens in {row['elapsed_s']:.2f} s)")
    return {"model": {"path": path.name, "dtype": "float32" if ctx.quick else ctx.dtype,
                      "vocab_size": vocab, **(QUICK_SHAPE if ctx.quick else QWEN_SHAPE),
                      "built_s": round(build_s, 2)},
            "workload": {"requests_per_batch": 2, "prompt_tokens": [4, 12] if ctx.quick
                         else [16, 256], "output_tokens": [2, 10] if ctx.quick else [16, 384],
                         "arrival": "all at t = 0, outputs forced (ignore_eos)"},
            "rows": rows, "skipped": skipped}


def _free(ctx: Context) -> None:
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()


def _binbaton(ctx: Context, path: Path, requests: list[BenchRequest], batch: int,
              max_len: int, graphs: bool) -> dict[str, Any]:
    """The engine with the insert policy; every kernel variant compiled and (with graphs)
    every bucket captured before the clock starts."""
    dtype = "float32" if ctx.quick else ctx.dtype
    setup = time.monotonic()
    engine = _engine(path, ctx, dtype, batch, max_len, cuda_graphs=graphs)
    if engine.ops.name == "triton":
        warm_up(engine.model.shape, engine.cache.k[0].dtype, batch, engine.cache.block_size,
                ctx.device)
    warm = [GenerationRequest(id=f"warm{i}", prompt_token_ids=r.prompt_token_ids[:16],
                              sampling=SamplingParams(max_tokens=3, ignore_eos=True))
            for i, r in enumerate(requests[:batch])]
    engine.generate(warm)  # the largest bucket, prefill and decode, once
    ctx.sync()
    setup_s = time.monotonic() - setup
    steps0, decode0, prefill0 = engine.stats.steps, engine.stats.decode_s, engine.stats.prefill_s
    t0 = time.perf_counter()
    outputs = engine.generate([GenerationRequest(
        id=r.id, prompt_token_ids=r.prompt_token_ids,
        sampling=SamplingParams(max_tokens=r.output_tokens, ignore_eos=True))
        for r in requests])
    ctx.sync()
    elapsed = time.perf_counter() - t0
    tokens = sum(len(o.token_ids) for o in outputs if o.ok)
    stats = engine.stats
    graphs_used = len(engine.runner.graphs)
    del engine
    return {"output_tokens": tokens, "elapsed_s": round(elapsed, 4),
            "output_tokens_per_s": round(tokens / elapsed, 1),
            "failed": sum(not o.ok for o in outputs), "steps": stats.steps - steps0,
            "decode_s": round(stats.decode_s - decode0, 3),
            "prefill_s": round(stats.prefill_s - prefill0, 3),
            "setup_s": round(setup_s, 2), "cuda_graphs_captured": graphs_used}


def _hf(ctx: Context, path: Path, requests: list[BenchRequest], batch: int, kind: str,
        memory: Any) -> dict[str, Any]:
    dtype = "float32" if ctx.quick else ctx.dtype
    setup = time.monotonic()
    model = huggingface.load_model(str(path), str(ctx.device), dtype)
    setup_s = time.monotonic() - setup
    if kind == "generate":
        pad = model.generation_config.pad_token_id or 0
        warm = BenchRequest(id="warm", prompt_token_ids=requests[0].prompt_token_ids[:16],
                            output_tokens=4)
        huggingface.run_generate(model, [warm], 1, pad, memory, progress=False)
        m = huggingface.run_generate(model, requests, batch, pad, memory, progress=False)
    else:
        m = huggingface.run_continuous(model, requests, batch, memory, progress=False,
                                       timeout_s=max(10.0, ctx.left()))
    del model
    return {"output_tokens": m.output_tokens, "elapsed_s": round(m.elapsed_s, 4),
            "output_tokens_per_s": round(m.output_tokens / m.elapsed_s, 1),
            "failed": m.failed, "setup_s": round(setup_s, 2)}


# ------------------------------------------------------------------------ profile

LAUNCH_CALLS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")
GRAPH_CALLS = ("cudaGraphLaunch", "cuGraphLaunch")
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
              "cuStreamSynchronize", "cuCtxSynchronize", "cudaMemcpy")



def _step_ms(engine: Any, ctx: Context, steps: int) -> float:
    """Milliseconds per engine step over ``steps`` steps, the device synced at both ends."""
    ctx.sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    ctx.sync()
    return (time.perf_counter() - t0) * 1000 / steps


def profile(ctx: Context, steps: int = 5) -> dict[str, Any]:
    """A full batch (the largest batch size) decoding, CUDA graphs on: ``steps`` decode
    steps traced with torch.profiler. GPU-busy fraction = union of the device's kernel and
    copy intervals over the window's wall time; launches, graph launches and host syncs
    are CUDA runtime/driver calls counted on the host, per step. The same steps are timed
    once untraced first (the profiler adds host time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batch, max_len = max(ctx.batches), 64 if ctx.quick else 1024
    dtype = "float32" if ctx.quick else ctx.dtype
    engine = _engine(throughput_model(ctx), ctx, dtype, batch, max_len)
    if engine.ops.name == "triton":
        warm_up(engine.model.shape, engine.cache.k[0].dtype, batch, engine.cache.block_size,
                ctx.device)
    vocab = 500 if ctx.quick else QWEN_VOCAB
    rng = random.Random(1)
    prompt = 8 if ctx.quick else 128
    for i in range(batch):
        engine.add(GenerationRequest(
            id=f"p{i}", prompt_token_ids=tuple(rng.randrange(3, vocab) for _ in range(prompt)),
            sampling=SamplingParams(max_tokens=max_len // 2, ignore_eos=True)))
    while engine.last_step is None or engine.last_step.admitted or len(engine.runner.rows) < batch:
        engine.step()
    for _ in range(3):
        engine.step()
    untraced_ms = _step_ms(engine, ctx, steps)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.cuda else [])
    with torch_profile(activities=activities) as prof:
        traced_ms = _step_ms(engine, ctx, steps)
    assert engine.last_step.decode_tokens == batch
    result = {"batch": batch, "steps": steps, "cuda_graphs": len(engine.runner.graphs),
              "step_ms_untraced": round(untraced_ms, 3), "step_ms_traced": round(traced_ms, 3),
              "output_tokens_per_s_untraced": round(batch / untraced_ms * 1000, 1),
              **_trace_counts(prof.events(), steps, traced_ms * 1000 * steps),
              "graph_replay_ms": _replay_ms(engine, batch, ctx)}
    if result["graph_replay_ms"] is not None:  # a cross-check of the traced busy fraction
        result["replay_fraction_of_step"] = round(result["graph_replay_ms"] / untraced_ms, 4)
    ctx.log(f"profile: batch {batch} {untraced_ms:.2f} ms/step untraced; "
            f"GPU busy {result['gpu_busy_fraction']}; per step {result['kernel_launches_per_step']}"
            f" launches, {result['graph_launches_per_step']} graph launches, "
            f"{result['host_syncs_per_step']} host syncs")
    del engine
    return result


def _replay_ms(engine: Any, batch: int, ctx: Context, repeat: int = 20) -> float | None:
    """Device time of one replay of the decode graph at ``batch`` rows (CUDA events),
    replaying the last step's inputs: the same K/V rewritten to the same slots."""
    graph = engine.runner.graphs.get(batch)
    if graph is None:
        return None
    graph.replay()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(repeat):
        graph.replay()
    end.record()
    end.synchronize()
    return round(begin.elapsed_time(end) / repeat, 4)


def _trace_counts(events: Any, steps: int, wall_us: float) -> dict[str, Any]:
    device, host = [], {"launch": 0, "graph": 0, "sync": 0, "ops": 0}
    for e in events:
        name = e.name
        if getattr(e, "device_type", None) is not None and "CUDA" in str(e.device_type):
            device.append((e.time_range.start, e.time_range.end))
        elif name in LAUNCH_CALLS:
            host["launch"] += 1
        elif name in GRAPH_CALLS:
            host["graph"] += 1
        elif name in SYNC_CALLS:
            host["sync"] += 1
        elif name.startswith("aten::"):
            host["ops"] += 1
    busy = _union(device)
    span = max(end for _, end in device) - min(start for start, _ in device) if device else 0
    return {
        # device busy over the traced steps' wall time (host clock), and over the span
        # from the first device event to the last
        "gpu_busy_fraction": None if not device else round(busy / wall_us, 4),
        "gpu_busy_fraction_of_device_span": None if not device else round(busy / span, 4),
        "gpu_busy_us_per_step": None if not device else round(busy / steps, 1),
        "device_events": len(device),
        "kernel_launches_per_step": host["launch"] / steps,
        "graph_launches_per_step": host["graph"] / steps,
        "host_syncs_per_step": host["sync"] / steps,
        "aten_ops_per_step": host["ops"] / steps,
        "sync_calls_counted": list(SYNC_CALLS),
    }


def _union(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by the intervals (overlaps counted once)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total
