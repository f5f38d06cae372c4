"""``binbaton bench host``: host time per decode step, before and after, side by side.

Host time is what the CPU spends per decode step while a GPU would do the arithmetic: the
engine's bookkeeping, the Python of every kernel op wrapper and the dispatch of every torch
op. To see it without a GPU, the engine runs on the CPU with the Triton kernel backend and
every Triton launch replaced by a no-op that counts it (``host_measure``): the wrappers run
as on a GPU, no kernel computes, and the model's torch ops run on tiny tensors (24 layers
of hidden 16, 2 heads, a 300-token vocabulary, 2048 positions). B requests (16-token
prompts, 512 new tokens reserved, so block tables are 33 blocks wide) are prefilled, then
``--steps`` decode steps are timed one by one after ``--warmup`` more.

Three versions, each in a subprocess of its own (one torch thread), ``--repeat`` times
round-robin at each batch size, in one run; the run with the least CPU time per step is
reported for each:
- ``before``: the engine at a base commit (``--base``, default 16d0e76, before the
  static-buffer engine), extracted with ``git archive`` and imported through a package
  shim (``binbaton.<x>`` -> its ``<x>/`` folder, as pyproject's package-dir maps them);
  its decode forward runs op by op;
- ``after-eager``: this tree, the decode forward op by op (``--no-cuda-graphs`` on a GPU);
- ``after-graphs``: this tree with the decode forward over the static buffers skipped, as
  one CUDA graph replay skips it on a GPU (the replay call's own cost is not counted).
Not counted in any version: Triton's own launch (its compiled launcher) and waiting on
host syncs; ``launches_per_step`` says how many launches each version makes and
``torch_ops_per_step`` how many torch ops that compute or copy (a kernel or a copy each on
a GPU).
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
from binbaton.bench.host_measure import MAX_TOKENS, PROMPT_TOKENS
from binbaton.bench.results import RESULTS_DIR, BenchResult, Percentiles, Row, now_iso, write_result
from binbaton.workers.engine.tiny import save_tiny_checkpoint

REPO = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ("schemas", "service", "workers", "kernels", "bench")  # binbaton.<name> -> <name>/
VERSIONS = {"before": ("before", "eager"), "after-eager": ("after", "eager"),
            "after-graphs": ("after", "replay")}  # version -> (source tree, variant)
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


def run_measurement(shim: Path, checkpoint: Path, batch: int, variant: str,
                    args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """``measure`` in a fresh interpreter that imports binbaton from ``shim`` only, with the
    Triton interpreter on (so the kernels' modules import without a GPU)."""
    code = (
        "import json, runpy, sys; "
        f"m = runpy.run_path({str(Path(host_measure.__file__).resolve())!r}); "
        f"print(json.dumps(m['measure']({str(checkpoint)!r}, {batch}, {args.steps}, "
        f"{args.warmup}, {variant!r})))"
    )
    env = {**os.environ, "PYTHONPATH": str(shim), "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def git_commit(ref: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref], check=True,
                          capture_output=True, text=True).stdout.strip()


RATIO_KEYS = ("cpu_ms_per_step", "engine_cpu_ms_per_step", "wall_ms_per_step")


def run(args: argparse.Namespace) -> BenchResult:
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if not batches or min(batches) < 1 or args.steps < 1 or args.repeat < 1 or args.warmup < 0:
        raise ValueError("--batches, --steps, --repeat must be >= 1 and --warmup >= 0")
    if 2 + args.warmup + args.steps >= MAX_TOKENS:  # + prefill and the counted step
        raise ValueError(f"--warmup + --steps must stay under {MAX_TOKENS - 2}")
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
            runs: dict[str, list[dict[str, float]]] = {version: [] for version in VERSIONS}
            for _ in range(args.repeat):  # round-robin: a change in load hits every version
                for version, (tree, variant) in VERSIONS.items():
                    runs[version].append(
                        run_measurement(trees[tree], checkpoint, batch, variant, args, work))
                    _print_run(batch, version, runs[version][-1])
            measured = {version: _least_disturbed(r) for version, r in runs.items()}
            rows += [_row(batch, version, measured[version]) for version in VERSIONS]
            before = measured["before"]
            ratios[str(batch)] = {
                after: {key: round(before[key] / measured[after][key], 2) for key in RATIO_KEYS}
                for after in ("after-eager", "after-graphs")
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
            "versions": {"before": "base commit, decode forward op by op",
                         "after-eager": "this tree, decode forward op by op",
                         "after-graphs": "this tree, decode forward skipped as a CUDA graph "
                                         "replay skips it (the replay call not counted)"},
            "ratio_before_over_after": ratios,
            "row_fields": "cpu_ms_per_step: the process's CPU time per decode step (lower "
                          "decile over the steps), split into forward_cpu_ms_per_step (inside "
                          "the model's forward) and engine_cpu_ms_per_step (the rest); "
                          "launches_per_step: Triton launches a step makes (each a no-op "
                          "here); torch_ops_per_step: aten ops a step dispatches that compute "
                          "or copy (not views or allocations; each a kernel or a copy on a "
                          "GPU), counted in one more untimed step; graph_replays_per_step: "
                          "decode forwards skipped as replays; "
                          "output_tokens_per_s: decode tokens per wall second (batch / median "
                          "step); latency_ms: one decode step's wall time (p50, p99); ttft_ms "
                          "and requests_per_s not measured",
            "method": "CPU, 1 torch thread, Triton kernel backend under TRITON_INTERPRET=1 "
                      "with every kernel launch a no-op: op wrappers, torch dispatch and "
                      "engine bookkeeping are timed, no kernel arithmetic; not timed: "
                      "Triton's compiled launcher (per launch), a graph replay call, waits "
                      "on host syncs",
            "threads": 1,
        },
    )


def _print_run(batch: int, version: str, m: dict[str, float]) -> None:
    print(f"batch {batch:4d} {version:12s} host (CPU) ms per decode step: "
          f"{m['cpu_ms_per_step']:7.3f}, of which the forward {m['forward_cpu_ms_per_step']:7.3f}"
          f" and the engine outside it {m['engine_cpu_ms_per_step']:6.3f}; "
          f"launches {m['launches_per_step']:5.0f}, torch ops {m['torch_ops_per_step']:4.0f};"
          f" wall {m['wall_ms_per_step']:7.2f}",
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
    """Bars of host ms per decode step per version and batch, split into the forward and
    the rest; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    batches = sorted({row.batch for row in result.rows})
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.27
    colors = {"before": "#ff7f0e", "after-eager": "#2ca02c", "after-graphs": "#1f77b4"}
    for i, version in enumerate(VERSIONS):
        rows = [next(r for r in result.rows if r.batch == b and r.extra["version"] == version)
                for b in batches]
        xs = [j + (i - 1) * width for j in range(len(batches))]
        forward = [r.extra["forward_cpu_ms_per_step"] for r in rows]
        engine = [r.extra["engine_cpu_ms_per_step"] for r in rows]
        ax.bar(xs, forward, width, color=colors[version], alpha=0.45,
               label=f"{version}: decode forward (op wrappers, dispatch)")
        ax.bar(xs, engine, width, bottom=forward, color=colors[version],
               label=f"{version}: engine outside the forward")
        for x, r in zip(xs, rows, strict=True):
            ax.text(x, r.extra["cpu_ms_per_step"], f"{r.extra['cpu_ms_per_step']:.2f}\n"
                    f"{r.extra['launches_per_step']:.0f} launches\n"
                    f"{r.extra['torch_ops_per_step']:.0f} torch ops", ha="center", va="bottom",
                    fontsize=7)
    ratios = result.notes["ratio_before_over_after"]
    ax.set_xticks(range(len(batches)), [
        f"batch {b}: before / after-eager {ratios[str(b)]['after-eager']['cpu_ms_per_step']:.2f}×,"
        f"\nbefore / after-graphs {ratios[str(b)]['after-graphs']['cpu_ms_per_step']:.2f}×"
        for b in batches
    ], fontsize=8)
    ax.set_ylabel("host (CPU) ms per decode step, no kernel arithmetic")
    ax.legend(fontsize=7)
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
