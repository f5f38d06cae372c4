"""PNG plots of one benchmark run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from binbaton.bench.results import BenchResult, Row


def baseline(rows: tuple[Row, ...]) -> Row | None:
    """The standard static batching row that ratios are read against."""
    for row in rows:
        if row.policy == "static" and row.system in ("binbaton", "model"):
            return row
    return rows[0] if rows else None


def plot_result(result: BenchResult, path: Path) -> Path:
    """Throughput bars (ratio to the static baseline on top) and latency p50/p99 bars."""
    rows = result.rows
    labels = [row.label for row in rows]
    base = baseline(rows)
    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(max(10, 1.1 * len(rows) + 6), 5.5))
    y = range(len(rows))
    throughput = [row.output_tokens_per_s for row in rows]
    ax_tp.barh(y, throughput, color=[_color(row) for row in rows])
    for i, row in enumerate(rows):
        ratio = row.output_tokens_per_s / base.output_tokens_per_s if base else 1.0
        ax_tp.text(throughput[i], i, f" {throughput[i]:.4g} ({ratio:.2f}×)", va="center")
    closed = [row.extra.get("closed_form_tokens_per_s") for row in rows]
    if any(c is not None for c in closed):
        xs = [c for c in closed if c is not None]
        ys = [i for i, c in enumerate(closed) if c is not None]
        ax_tp.scatter(xs, ys, marker="|", s=300, color="black", label="closed form", zorder=3)
        ax_tp.legend(loc="lower right")
    ax_tp.set_yticks(list(y), labels)
    ax_tp.invert_yaxis()
    ax_tp.set_xlabel(f"output tokens/s ({result.notes.get('time_unit', 'wall clock')})")
    ax_tp.set_xlim(0, max(throughput) * 1.35 if throughput else 1)
    p50 = [row.latency_ms.p50 for row in rows]
    p99 = [row.latency_ms.p99 for row in rows]
    ax_lat.barh([i - 0.2 for i in y], p50, height=0.4, label="latency p50")
    ax_lat.barh([i + 0.2 for i in y], p99, height=0.4, label="latency p99")
    ax_lat.set_yticks(list(y), [""] * len(rows))
    ax_lat.invert_yaxis()
    ax_lat.set_xlabel("latency (ms)")
    ax_lat.legend(loc="lower right")
    workload = result.workload.get("name", "")
    fig.suptitle(f"{result.name} — {workload}, {result.device}, {result.started}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _color(row: Row) -> str:
    colors = {
        "hf-generate": "#999999",
        "hf-continuous": "#666666",
        "pipeline": "#8c564b",
        "model": "#1f77b4",
    }
    if row.system in colors:
        return colors[row.system]
    return {"static": "#ff7f0e", "multibin-static": "#2ca02c", "insert": "#d62728"}.get(
        row.policy, "#9467bd"
    )
