"""``binbaton bench report FILE.json…``: a Markdown table of results files (bench/README.md).

Ratios are read against the file's standard static batching row: per wall-clock second,
per CPU-second (robust on shared cores) and, for binbaton rows, in decode steps (how many
scheduler iterations static needs per one of this row's: what a device whose step cost does
not grow with the batch, like a GPU at these sizes, would turn into throughput).
A ``bench kernels`` file gets a table of its own: time and achieved bandwidth per system,
batch and context.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from binbaton.bench.results import is_kernel_row, read_result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, help="results JSON files")


def _label(row: dict[str, Any]) -> str:
    parts = [row["system"], row["policy"]]
    if row["bins"] > 1:
        parts.append(f"k={row['bins']}")
    if "lengths" in row:
        parts.append(f"({row['lengths']})")
    return " ".join(p for p in parts if p)


def _ratio(value: float | None, base: float | None) -> str:
    if not value or not base:
        return "–"
    return f"{value / base:.2f}×"


def table(data: dict[str, Any]) -> str:
    rows = data["rows"]
    base = next((r for r in rows if r["policy"] == "static" and r["system"] != "pipeline"),
                rows[0])
    lines = [
        "| system | tok/s | × static | tok/CPU-s | × static | steps | × static (steps) "
        "| TTFT p50 / p99 ms | latency p50 / p99 ms | peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cpu, base_cpu = r.get("output_tokens_per_cpu_s"), base.get("output_tokens_per_cpu_s")
        steps = r.get("steps")
        step_ratio = f"{base['steps'] / steps:.2f}×" if steps and base.get("steps") else "–"
        memory = "–" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        lines.append(
            f"| {_label(r)} | {r['output_tokens_per_s']:.4g} "
            f"| {_ratio(r['output_tokens_per_s'], base['output_tokens_per_s'])} "
            f"| {cpu:.4g} | {_ratio(cpu, base_cpu)} " if cpu else
            f"| {_label(r)} | {r['output_tokens_per_s']:.4g} "
            f"| {_ratio(r['output_tokens_per_s'], base['output_tokens_per_s'])} | – | – "
        )
        lines[-1] += (
            f"| {steps or '–'} | {step_ratio} "
            f"| {r['ttft_ms']['p50']:.0f} / {r['ttft_ms']['p99']:.0f} "
            f"| {r['latency_ms']['p50']:.0f} / {r['latency_ms']['p99']:.0f} | {memory} |"
        )
    return "\n".join(lines)


def kernel_table(data: dict[str, Any]) -> str:
    lines = [
        "| system | batch | context | time µs | achieved GB/s | % of device copy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        share = r.get("fraction_of_copy")
        lines.append(
            f"| {r['system']} | {r['batch']} | {r['context']} | {r['time_us']:.4g} "
            f"| {r['achieved_gb_per_s']:.4g} | {'–' if share is None else f'{100 * share:.1f}%'} |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    for path in args.files:
        data = read_result(path)
        workload = data["workload"]
        kernels = bool(data["rows"]) and all(is_kernel_row(r) for r in data["rows"])
        print(f"### {path.name}\n")
        size = "" if kernels else f", {workload.get('requests')} requests"
        print(f"device: {data['device']}; model: {data['model'].get('name')}; workload: "
              f"{workload.get('name')}{size}; started {data['started']}\n")
        print(kernel_table(data) if kernels else table(data))
        print()
    return 0
