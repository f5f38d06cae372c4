"""``binbaton bench host``: host time per decode step, before and after, side by side.

The model is a preset whose arithmetic is small (24 layers of hidden 16, 2 heads, a
~300-token vocabulary, 2048 positions), so a decode step's time is host time: the engine's
bookkeeping plus the Python and dispatch cost of every op the forward calls. B requests
(16-token prompts, 512 new tokens reserved, so block tables are 33 blocks wide) are
prefilled, then ``--steps`` decode steps are timed one by one after ``--warmup`` more.

BEFORE is the engine at a base commit (``--base``, default 16d0e76, where this branch
started), extracted with ``git archive`` into a temporary directory and imported through a
package shim (``binbaton.<x>`` -> its ``<x>/`` folder, as pyproject's package-dir maps
them); AFTER is this tree, imported the same way. Each measurement runs
``host_measure.measure`` in a subprocess of its own (one torch thread), BEFORE then AFTER
at each batch size, ``--repeat`` times round-robin, in one run; the run with the least CPU
time per step is reported for each. Reported per step: the process's CPU time, split into
the model's forward and the engine outside it (scheduling, inputs, sampling,
postprocessing); the wall time; and, in further steps of the same run, the engine alone:
its CPU time per step with the forward replaced by fixed logits. Other work on the shared
cores only ever adds time, so each CPU figure is the lower decile over the steps (the least
disturbed steps), and the wall time the median.

On the CPU both versions run the forward eagerly through the torch twins of the kernel
ops (the same ops, less the fused projections), so the forward's share is op dispatch and
small-tensor arithmetic that a CUDA-graph replay would take off the host on a GPU; the
engine alone is the host's share left around such a replay. This benchmark does not run
the GPU path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from binbaton.bench import host_measure
from binbaton.bench.checkpoint import describe_checkpoint
from binbaton.bench.host_measure import (
    ENGINE_ALONE_STEPS,
    ENGINE_ALONE_WARMUP,
    MAX_TOKENS,
    PROMPT_TOKENS,
)
from binbaton.bench.results import RESULTS_DIR, BenchResult, Percentiles, Row, now_iso, write_result
from binbaton.workers.engine.tiny import save_tiny_checkpoint

REPO = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ("schemas", "service", "workers", "kernels", "bench")  # binbaton.<name> -> <name>/
PRESET: dict[str, Any] = dict(
    arch="llama", hidden_size=16, intermediate_size=32, num_hidden_layers=24,
    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048, vocab_size=300,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default="16d0e76", help="git commit measured as BEFORE")
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--steps", type=int, default=40, help="decode steps timed per run")
    parser.add_argument("--warmup", type=int, default=5, help="decode steps run before timing")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per version and batch, round-robin; the least disturbed "
                             "(least CPU per step) is reported")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="host")


# ---- the run: source trees, subprocesses, results -----------------------------------------


def package_shim(source: Path, into: Path) -> Path:
    """A directory to put on PYTHONPATH so that ``binbaton.<x>`` is ``source/<x>``."""
    package = into / "binbaton"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text((source / "binbaton" / "__init__.py").read_text())
    for name in PACKAGE_DIRS:
        (package / name).symlink_to(source / name, target_is_directory=True)
    return into


def extract_commit(commit: str, into: Path) -> Path:
    """The files of ``commit`` (``git archive``), without touching the repository's state."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_measurement(shim: Path, checkpoint: Path, batch: int, args: argparse.Namespace,
                    workdir: Path) -> dict[str, float]:
    """``measure`` in a fresh interpreter that imports binbaton from ``shim`` only."""
    code = (
        "import json, runpy, sys; "
        f"m = runpy.run_path({str(Path(host_measure.__file__).resolve())!r}); "
        f"print(json.dumps(m['measure']({str(checkpoint)!r}, {batch}, {args.steps}, "
        f"{args.warmup})))"
    )
    env = {**os.environ, "PYTHONPATH": str(shim)}
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def git_commit(ref: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref], check=True,
                          capture_output=True, text=True).stdout.strip()


def run(args: argparse.Namespace) -> BenchResult:
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if not batches or min(batches) < 1 or args.steps < 1 or args.repeat < 1 or args.warmup < 0:
        raise ValueError("--batches, --steps, --repeat must be >= 1 and --warmup >= 0")
    if 1 + args.warmup + args.steps + ENGINE_ALONE_WARMUP + ENGINE_ALONE_STEPS >= MAX_TOKENS:
        raise ValueError(f"--warmup + --steps must stay under {MAX_TOKENS - 211}")
    started = now_iso()
    with tempfile.TemporaryDirectory(prefix="binbaton-bench-host-") as tmp:
        work = Path(tmp)
        checkpoint = save_tiny_checkpoint(work / "model", seed=0, **PRESET)
        trees = {
            "before": package_shim(extract_commit(args.base, work / "base"), work / "shim-before"),
            "after": package_shim(REPO, work / "shim-after"),
        }
        rows, ratios = [], {}
        for batch in batches:
            runs: dict[str, list[dict[str, float]]] = {version: [] for version in trees}
            for _ in range(args.repeat):  # round-robin: a change in load hits both versions
                for version, shim in trees.items():
                    runs[version].append(run_measurement(shim, checkpoint, batch, args, work))
                    _print_run(batch, version, runs[version][-1])
            measured = {version: _least_disturbed(r) for version, r in runs.items()}
            rows += [_row(batch, version, measured[version]) for version in trees]
            before, after = measured["before"], measured["after"]
            ratios[str(batch)] = {
                key: round(before[key] / after[key], 2)
                for key in ("cpu_ms_per_step", "engine_cpu_ms_per_step",
                            "engine_alone_cpu_ms_per_step", "wall_ms_per_step")
            }
        model = describe_checkpoint(checkpoint, "host")
    return BenchResult(
        name=args.name,
        device="cpu",
        model=model,
        workload={"name": "decode-steps", "requests": max(batches), "batches": batches,
                  "prompt_tokens": PROMPT_TOKENS, "max_tokens": MAX_TOKENS,
                  "steps_timed": args.steps, "warmup_steps": args.warmup,
                  "repeats": args.repeat},
        started=started,
        rows=tuple(rows),
        notes={
            "before": f"{args.base} ({git_commit(args.base)})",
            "after": f"this tree ({git_commit('HEAD')}"
                     f"{', with uncommitted changes' if _dirty() else ''})",
            "ratio_before_over_after": ratios,
            "row_fields": "cpu_ms_per_step: the process's CPU time per decode step (lower decile), "
                          "split into forward_cpu_ms_per_step (inside the model's forward) and "
                          "engine_cpu_ms_per_step (the rest); engine_alone_cpu_ms_per_step: "
                          "CPU time per step with the forward replaced by fixed logits "
                          f"(lower decile of {ENGINE_ALONE_STEPS} steps after "
                          f"{ENGINE_ALONE_WARMUP}); "
                          "output_tokens_per_s: decode "
                          "tokens per wall second (batch / median step); latency_ms: one "
                          "decode step's wall time (p50, p99); ttft_ms and requests_per_s "
                          "not measured",
            "threads": 1,
            "kernel_backend": "torch (the CPU has no Triton compiler)",
        },
    )


def _print_run(batch: int, version: str, m: dict[str, float]) -> None:
    print(f"batch {batch:4d} {version:6s} host (CPU) ms per decode step: "
          f"{m['cpu_ms_per_step']:7.2f}, of which the engine outside the forward "
          f"{m['engine_cpu_ms_per_step']:6.3f}; the engine alone "
          f"{m['engine_alone_cpu_ms_per_step']:6.3f}; wall {m['wall_ms_per_step']:7.2f}",
          flush=True)


def _least_disturbed(runs: list[dict[str, float]]) -> dict[str, Any]:
    """The run with the least CPU time per step, with every run's step time beside it."""
    best = min(runs, key=lambda m: m["cpu_ms_per_step"])
    return {**best, "cpu_ms_per_step_runs": [round(m["cpu_ms_per_step"], 3) for m in runs]}


def _row(batch: int, version: str, m: dict[str, Any]) -> Row:
    step_ms = m["wall_ms_per_step"]
    return Row(
        system="binbaton", policy="static", bins=1, batch=batch,
        output_tokens_per_s=batch / (step_ms / 1000),
        requests_per_s=0.0,
        ttft_ms=Percentiles.of([]),
        latency_ms=Percentiles(step_ms, m["wall_ms_p99"]),
        peak_memory_mb=None,
        extra={"version": version,
               **{k: v if isinstance(v, list) else round(v, 3) for k, v in m.items()}},
    )


def _dirty() -> bool:
    status = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                             "--untracked-files=no", "--", "."],
                            check=True, capture_output=True, text=True).stdout
    return bool(status.strip())


def plot(result: BenchResult, path: Path) -> Path | None:
    """Bars of host ms per decode step, BEFORE vs AFTER per batch, split into the forward
    and the rest; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    batches = sorted({row.batch for row in result.rows})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.38
    for offset, version, color in ((-width / 2, "before", "#ff7f0e"),
                                   (width / 2, "after", "#1f77b4")):
        rows = [next(r for r in result.rows if r.batch == b and r.extra["version"] == version)
                for b in batches]
        xs = [i + offset for i in range(len(batches))]
        forward = [r.extra["forward_cpu_ms_per_step"] for r in rows]
        engine = [r.extra["engine_cpu_ms_per_step"] for r in rows]
        ax.bar(xs, forward, width, color=color, alpha=0.5,
               label=f"{version}: model forward (eager torch ops)")
        ax.bar(xs, engine, width, bottom=forward, color=color,
               label=f"{version}: engine outside the forward")
        for x, r in zip(xs, rows, strict=True):
            total, engine_ms = r.extra["cpu_ms_per_step"], r.extra["engine_cpu_ms_per_step"]
            ax.text(x, total, f"{total:.1f}\n(engine {engine_ms:.2f})", ha="center",
                    va="bottom", fontsize=7)
    ratios = result.notes["ratio_before_over_after"]
    ax.set_xticks(range(len(batches)), [
        f"batch {b}, before / after: step {ratios[str(b)]['cpu_ms_per_step']:.2f}×,\n"
        f"engine outside the forward {ratios[str(b)]['engine_cpu_ms_per_step']:.2f}×, "
        f"engine alone {ratios[str(b)]['engine_alone_cpu_ms_per_step']:.2f}×"
        for b in batches
    ], fontsize=8)
    ax.set_ylabel("host (CPU) ms per decode step")
    ax.legend(fontsize=8)
    fig.suptitle(f"{result.name}: {result.notes['before']} vs {result.notes['after']}, "
                 f"{result.device}, {result.started}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(args: argparse.Namespace) -> int:
    result = run(args)
    path = write_result(result, args.out)
    png = plot(result, path.with_suffix(".png"))
    for batch, ratio in result.notes["ratio_before_over_after"].items():
        print(f"batch {batch}: before / after {ratio}")
    print(f"wrote {path}" + (f" and {png.name}" if png else " (no matplotlib: no PNG)"))
    return 0
