"""``binbaton bench gpu``: the one GPU check, sized to finish inside a lent GPU machine's
time (under 8 minutes on one H100/H200), writing one JSON file (and a PNG when matplotlib
imports) to ``--out``.

Sections, in order, each with a time budget; a global deadline (``--deadline-s``, from
the start of the process) skips what no longer fits, and the JSON is rewritten after every
section, so a run cut short still leaves its file:
- ``kernels``: every Triton kernel against its torch twin (bf16, fp16, fp32), the warm-up
  of every variant, decode-attention GB/s against the device's copy bandwidth (batch
  1-256, context 512-8k, one mixed-length batch) (``bench/gpu_kernels.py``);
- ``exactness``: float32 greedy tokens through the engine with the compiled kernels and
  CUDA graphs equal the torch backend's and HF generate's, on two architectures;
- ``engine``: output tok/s on a Qwen2.5-0.5B-shaped random model at each batch size:
  binbaton (insert policy) with CUDA graphs on and off, HF continuous batching, HF static
  ``generate``, on the same requests;
- ``profile``: decode steps of a full batch traced with torch.profiler: GPU-busy fraction,
  kernel launches, graph launches, host syncs per step.
(``bench/gpu_engine.py`` holds the last three.)

``--quick`` runs every section at toy sizes (on the CPU: the torch backend, and the Triton
interpreter for the kernels and the exactness check) in seconds; its figures are not GPU
figures. Imports only torch, triton, transformers and numpy (matplotlib optionally, for
the plot): no pytest, msgspec, aiokafka or OpenTelemetry.

    python -m binbaton.bench.gpu --out bench/results            # on a GPU machine
    python -m binbaton.bench.gpu --quick --device cpu --out /tmp/gpu-quick
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from binbaton.bench import gpu_engine, gpu_kernels
from binbaton.bench.results import RESULTS_DIR, now_iso, slug

PROCESS_START = time.monotonic()
SECTIONS = ("kernels", "exactness", "engine", "profile")
# seconds each section may take on a GPU; it is skipped when less than MINIMUM is left
BUDGET = {"kernels": 140.0, "exactness": 60.0, "engine": 190.0, "profile": 40.0}
MINIMUM = {"kernels": 40.0, "exactness": 20.0, "engine": 60.0, "profile": 20.0}
# 7 minutes from this module's import: under 8 with the imports before it, the plot and
# the interpreter's exit
DEFAULT_DEADLINE_S = 420.0


class SectionTimeout(BaseException):
    """A section's budget ran out (not an Exception: a section's own error handling
    must not swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise SectionTimeout in the main thread after ``seconds`` (no limit elsewhere)."""
    if threading.current_thread() is not threading.main_thread() or seconds == float("inf"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"section ran past its {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="binbaton bench gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--quick", action="store_true",
                        help="toy sizes: every section in seconds (the CPU test)")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--batches", default="64,256", help="engine batch sizes")
    parser.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16")
    parser.add_argument("--deadline-s", type=float, default=DEFAULT_DEADLINE_S,
                        help="skip sections that would end past this many seconds")
    parser.add_argument("--name", default="gpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    sections = [s for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        print(f"binbaton bench gpu: unknown sections {sorted(unknown)}; choose from {SECTIONS}",
              file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda":
        # Triton kernels run only under the interpreter off CUDA; it is chosen when triton
        # is first imported, which nothing has done yet.
        os.environ.setdefault("TRITON_INTERPRET", "1")
        torch.set_num_threads(min(2, torch.get_num_threads()))
    batches = tuple(int(b) for b in args.batches.split(",") if b.strip())
    if args.quick:
        batches = tuple(sorted({min(b, 4) for b in batches[:1]} | {min(8, max(batches))}))
    args.out = out = args.out or RESULTS_DIR
    result = run(device, sections, batches, args)
    path = write(result, out, args.name)
    png = plot(result, path.with_suffix(".png"))
    summarize(result)
    print(f"wrote {path}" + (f" and {png.name}" if png else " (no matplotlib: no PNG)"))
    return 0 if all(s["status"] in ("ok", "skipped") for s in result["sections"].values()) else 1


def run(device: Any, sections: list[str], batches: tuple[int, ...],
        args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "name": args.name, "device": _device_name(device), "started": now_iso(),
        "quick": args.quick, "versions": _versions(), "deadline_s": args.deadline_s,
        "batches": list(batches), "sections": {},
    }
    out = args.out
    with tempfile.TemporaryDirectory(prefix="binbaton-bench-gpu-") as tmp:
        for name in sections:
            left = args.deadline_s - (time.monotonic() - PROCESS_START)
            budget = BUDGET[name] * (0.5 if args.quick else 1.0)
            if left < (0 if args.quick else MINIMUM[name]):
                result["sections"][name] = {"status": "skipped",
                                            "reason": f"{left:.0f} s left of the deadline"}
                print(f"[{name}] skipped: {left:.0f} s left", flush=True)
                continue
            limit = min(budget, left)
            ctx = gpu_engine.Context(
                device=device, quick=args.quick, workdir=Path(tmp), batches=batches,
                dtype=args.dtype, deadline=time.monotonic() + 0.8 * limit,
                log=_logger(name))
            result["sections"][name] = _run_section(SECTION_RUNNERS[name], ctx, limit)
            print(f"[{name}] {result['sections'][name]['status']} in "
                  f"{result['sections'][name]['seconds']} s", flush=True)
            result["targets"] = targets(result)
            write(result, out, args.name)
            _free(device)
    result["total_s"] = round(time.monotonic() - PROCESS_START, 1)
    result["targets"] = targets(result)
    return result


def _logger(section: str) -> Callable[[str], None]:
    def log(line: str) -> None:
        print(f"[{section}] {line}", flush=True)

    return log


def _run_section(fn: Callable[[Any], dict[str, Any]], ctx: Any, limit: float) -> dict[str, Any]:
    """``fn(ctx)`` within ``limit`` seconds; on a timeout or an error, what the section put
    in ``ctx.partial`` so far is kept beside the error."""
    start = time.monotonic()
    try:
        with time_limit(limit):
            data = fn(ctx)
        status = "ok"
    except SectionTimeout as exc:
        data, status = {**getattr(ctx, "partial", {}), "error": str(exc)}, "timeout"
    except Exception as exc:  # a section's failure is recorded; the next one still runs
        data, status = {**getattr(ctx, "partial", {}), "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc(limit=8)}, "error"
        print(data["traceback"], file=sys.stderr, flush=True)
    return {"status": status, "seconds": round(time.monotonic() - start, 1), **data}


def kernels(ctx: Any) -> dict[str, Any]:
    data = gpu_kernels.run(ctx.device, quick=ctx.quick,
                           dtype=torch.bfloat16 if ctx.dtype == "bfloat16" else torch.float16)
    worst = max(data["accuracy"],
                key=lambda r: r["max_abs_error"] / max(r["max_abs_value"], 1e-30))
    ctx.log(f"accuracy: {len(data['accuracy'])} op/dtype pairs, worst relative "
            f"{worst['max_abs_error'] / max(worst['max_abs_value'], 1e-30):.3g} ({worst['op']} "
            f"{worst['dtype']}); {len(data['rows'])} bandwidth points")
    return data


SECTION_RUNNERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "kernels": kernels, "exactness": gpu_engine.exactness, "engine": gpu_engine.throughput,
    "profile": gpu_engine.profile,
}


# ------------------------------------------------------------------------ targets


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Issue 10's GPU targets, read off this run where its sections produced the figures."""
    sections, found = result["sections"], {}
    bandwidth = [r for r in sections.get("kernels", {}).get("rows", [])
                 if r["batch"] == 256 and r["context"] >= 1024 and r["lengths"] == "uniform"]
    if bandwidth:
        fraction = min(r["fraction_of_copy"] for r in bandwidth)
        found["decode_attention_b256_ctx_ge_1024_min_fraction_of_copy"] = {
            "value": fraction, "target": 0.7, "met": fraction >= 0.7}
    rows = sections.get("engine", {}).get("rows", [])
    for batch in sorted({r["batch"] for r in rows}):
        tps = {r["system"]: r.get("output_tokens_per_s") for r in rows if r["batch"] == batch}
        ours = tps.get("binbaton insert, graphs")
        if ours is None:
            continue
        for system, target in (("hf-continuous", 1.5), ("hf-generate", 6.0)):
            if tps.get(system):
                ratio = round(ours / tps[system], 2)
                found[f"b{batch}_insert_graphs_over_{system}"] = {
                    "value": ratio, "target": target, "met": ratio >= target}
        if batch == 256:
            found["b256_output_tokens_per_s"] = {"value": ours, "target": 30000,
                                                 "met": ours >= 30000}
    busy = sections.get("profile", {}).get("gpu_busy_fraction")
    if busy is not None:
        found["gpu_busy_fraction"] = {"value": busy, "target": 0.8, "met": busy >= 0.8}
    return found


# ------------------------------------------------------------------------ output


def write(result: dict[str, Any], out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result['started'][:10]}-{slug(result['device'])}-{name}.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(result, indent=2, default=str) + "\n")
    partial.replace(path)
    return path


def summarize(result: dict[str, Any]) -> None:
    print(f"\n== binbaton bench gpu on {result['device']} ({result.get('total_s')} s) ==")
    for name, section in result["sections"].items():
        print(f"{name:10s} {section['status']:8s} {section.get('seconds', '')} s "
              f"{section.get('error', section.get('reason', ''))}")
    exact = result["sections"].get("exactness", {})
    for r in exact.get("rows", []):
        print(f"exactness {r['arch']:6s} triton == {r['triton_vs']:5s} "
              f"{r['equal']}/{r['requests']}")
    for r in result["sections"].get("engine", {}).get("rows", []):
        print(f"engine batch {r['batch']:4d} {r['system']:24s} "
              f"{r.get('output_tokens_per_s', 0.0):10.1f} tok/s {r.get('error', '')}")
    prof = result["sections"].get("profile", {})
    if prof.get("status") == "ok":
        print(f"profile batch {prof['batch']}: {prof['step_ms_untraced']} ms/step, GPU busy "
              f"{prof['gpu_busy_fraction']}, launches {prof['kernel_launches_per_step']}, "
              f"graph launches {prof['graph_launches_per_step']}, syncs "
              f"{prof['host_syncs_per_step']} per step")
    for key, t in result.get("targets", {}).items():
        verdict = "met" if t["met"] else "NOT met"
        print(f"target {key}: {t['value']} (target {t['target']}) {verdict}")


def plot(result: dict[str, Any], path: Path) -> Path | None:
    """Decode-attention fraction of copy bandwidth by batch and context; engine tok/s by
    system and batch. None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = result["sections"].get("kernels", {}).get("rows", [])
    for context in sorted({r["context"] for r in rows if r["lengths"] == "uniform"}):
        points = sorted((r["batch"], r["fraction_of_copy"]) for r in rows
                        if r["context"] == context and r["lengths"] == "uniform")
        left.plot(*zip(*points, strict=True), marker="o", label=f"context {context}")
    for r in rows:
        if r["lengths"] == "mixed":
            left.scatter([r["batch"]], [r["fraction_of_copy"]], marker="x", color="black",
                         label=f"mixed lengths up to {r['context']}")
    left.set_xscale("log", base=2)
    left.set_xlabel("batch")
    left.set_ylabel("decode attention GB/s / copy GB/s")
    left.set_title("decode attention bandwidth", fontsize=9)
    if rows:
        left.legend(fontsize=7)
    engine = result["sections"].get("engine", {}).get("rows", [])
    systems = list(dict.fromkeys(r["system"] for r in engine))
    batches = sorted({r["batch"] for r in engine})
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        for j, batch in enumerate(batches):
            value = next((r.get("output_tokens_per_s") for r in engine
                          if r["system"] == system and r["batch"] == batch), None)
            if value is not None:
                right.bar(j + i * width, value, width, color=f"C{i}",
                          label=system if j == 0 else None)
                right.text(j + i * width, value, f"{value:.0f}", ha="center", va="bottom",
                           fontsize=6)
    right.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))],
                     [f"batch {b}" for b in batches])
    right.set_ylabel("output tokens / s")
    right.set_title("engine throughput, same requests", fontsize=9)
    if engine:
        right.legend(fontsize=7)
    fig.suptitle(f"binbaton bench gpu: {result['device']}, {result['started']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _device_name(device: Any) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for module in ("torch", "triton", "transformers"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = "absent"
    return versions


def _free(device: Any) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
