"""``binbaton bench model``: the Multi-Bin queueing model over k, written as a results file."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from binbaton.bench.model import (
    ARRIVALS,
    arrivals,
    closed_form_throughput,
    noisy_prediction,
    simulate,
)
from binbaton.bench.plot import plot_result
from binbaton.bench.results import (
    RESULTS_DIR,
    BenchResult,
    Percentiles,
    Row,
    length_stats,
    now_iso,
    write_result,
)
from binbaton.bench.workload import AZURE_CSV, read_azure_lengths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lengths", choices=("uniform", "azure"), default="uniform")
    parser.add_argument("--batch", type=int, default=16, help="batch size B")
    parser.add_argument("--bins", default="1,2,4,8,16", help="comma-separated k values")
    parser.add_argument("--requests", type=int, default=16 * 16 * 500)
    parser.add_argument("--l-min", type=float, default=0.0, help="uniform lengths: minimum")
    parser.add_argument("--l-max", type=float, default=1024.0, help="uniform lengths: maximum")
    parser.add_argument("--trace", type=Path, default=AZURE_CSV)
    parser.add_argument("--arrival", choices=ARRIVALS, default="saturate")
    parser.add_argument(
        "--load", type=float, default=0.9, help="poisson: arrival rate as a fraction of C_1"
    )
    parser.add_argument(
        "--noise", type=float, default=0.0, help="prediction noise: lognormal sigma (0 = oracle)"
    )
    parser.add_argument(
        "--step-ms", type=float, default=1000.0, help="ms per decode step (1000: per-s = per-step)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default=None, help="results file name (default model-<lengths>)")


def parse_bins(text: str) -> list[int]:
    try:
        bins = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"--bins must be comma-separated integers, got {text!r}") from exc
    if not bins or min(bins) < 1:
        raise ValueError(f"--bins needs values >= 1, got {text!r}")
    return bins


def sample_lengths(args: argparse.Namespace, rng: np.random.Generator) -> np.ndarray:
    if args.lengths == "uniform":
        if not 0 <= args.l_min <= args.l_max:
            raise ValueError(f"need 0 <= l-min <= l-max, got {args.l_min}, {args.l_max}")
        return rng.uniform(args.l_min, args.l_max, size=args.requests)
    _, outputs = read_azure_lengths(args.trace)
    return rng.choice(outputs, size=args.requests, replace=True).astype(np.float64)


def run(args: argparse.Namespace) -> BenchResult:
    if args.batch < 1 or args.requests < 1 or args.step_ms <= 0:
        raise ValueError("--batch, --requests and --step-ms must be positive")
    bins = parse_bins(args.bins)
    started = now_iso()
    rng = np.random.default_rng(args.seed)
    lengths = sample_lengths(args, rng)
    predicted = noisy_prediction(lengths, args.noise, rng)
    uniform = args.lengths == "uniform"
    # Poisson rate: a fraction of standard batching's capacity, the same stream for every k.
    c1 = len(lengths) / simulate(lengths, predicted, np.zeros(len(lengths)), 1, args.batch).makespan
    arrival = arrivals(len(lengths), args.arrival, args.load * c1, rng)
    ms = args.step_ms
    rows = []
    base = None
    for k in bins:
        sim = simulate(lengths, predicted, arrival, k, args.batch)
        base = base or sim.requests_per_step
        extra = {
            "lengths": "oracle" if args.noise == 0 else f"noisy σ={args.noise}",
            "gain_vs_first": round(sim.requests_per_step / base, 4),
            "batches": sim.num_batches,
        }
        if uniform and args.arrival == "saturate":  # the closed form is the saturated rate
            closed = closed_form_throughput(args.batch, k, args.l_min, args.l_max)
            mean = (args.l_min + args.l_max) / 2
            extra["closed_form_requests_per_s"] = round(closed * 1000 / ms, 6)
            extra["closed_form_tokens_per_s"] = round(closed * mean * 1000 / ms, 4)
            extra["sim_over_closed_form"] = round(sim.requests_per_step / closed, 4)
        rows.append(
            Row(
                system="model",
                policy="static" if k == 1 else "multibin-static",
                bins=k,
                batch=args.batch,
                output_tokens_per_s=sim.tokens_per_step * 1000 / ms,
                requests_per_s=sim.requests_per_step * 1000 / ms,
                ttft_ms=Percentiles.of(sim.ttft * ms),
                latency_ms=Percentiles.of(sim.latency * ms),
                peak_memory_mb=None,
                extra=extra,
            )
        )
    workload = {
        "name": "uniform" if uniform else f"azure GeneratedTokens ({args.trace.name})",
        "requests": len(lengths),
        "output_tokens": length_stats(lengths),
        "arrival": args.arrival,
        **({"load_of_c1": args.load} if args.arrival == "poisson" else {}),
        **({"l_min": args.l_min, "l_max": args.l_max} if uniform else {}),
        "seed": args.seed,
    }
    return BenchResult(
        name=args.name or f"model-{args.lengths}-{args.arrival}",
        device="cpu",
        model={"name": "Multi-Bin queueing model (arXiv 2412.04504)", "batch": args.batch},
        workload=workload,
        started=started,
        rows=tuple(rows),
        notes={
            "time_unit": f"1 decode step = {ms:g} ms",
            "peak_memory_mb": "not modelled",
        },
    )


def main(args: argparse.Namespace) -> int:
    result = run(args)
    path = write_result(result, args.out)
    plot_result(result, path.with_suffix(".png"))
    for row in result.rows:
        print(
            f"{row.label:40s} {row.requests_per_s:10.5f} req/s  "
            f"gain {row.extra['gain_vs_first']:.3f}  latency p50 {row.latency_ms.p50:.4g} ms"
            + (
                f"  sim/closed {row.extra['sim_over_closed_form']:.4f}"
                if "sim_over_closed_form" in row.extra
                else ""
            )
        )
    print(f"wrote {path} and {path.with_suffix('.png').name}")
    return 0
