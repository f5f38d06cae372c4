"""PNG plots of one benchmark run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from binbaton.bench.results import BenchResult, Row
from matplotlib.axes import Axes


def baseline(rows: tuple[Row, ...]) -> Row | None:
    """The standard static batching row that ratios are read against."""
    for row in rows:
        if row.policy == "static" and row.system in ("binbaton", "model"):
            return row
    return rows[0] if rows else None


def plot_result(result: BenchResult, path: Path) -> Path:
    """Throughput bars (ratio to the static baseline beside each), per wall-clock second and,
    where measured, per CPU second; latency p50/p99 bars."""
    rows = result.rows
    with_cpu = all("output_tokens_per_cpu_s" in row.extra for row in rows)
    panels = 3 if with_cpu else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels + 4, 1.0 + 0.55 * len(rows) + 2))
    unit = result.notes.get("time_unit", "wall clock")
    _throughput(axes[0], rows, lambda r: r.output_tokens_per_s, f"output tokens/s ({unit})")
    if with_cpu:
        _throughput(axes[1], rows, lambda r: r.extra["output_tokens_per_cpu_s"],
                    "output tokens per CPU-second")
        axes[1].set_yticks(range(len(rows)), [""] * len(rows))
    closed = [row.extra.get("closed_form_tokens_per_s") for row in rows]
    if any(c is not None for c in closed):
        ys = [i for i, c in enumerate(closed) if c is not None]
        axes[0].scatter([c for c in closed if c is not None], ys, marker="|", s=300,
                        color="black", label="closed form", zorder=3)
        axes[0].legend(loc="lower right")
    _latency(axes[-1], rows)
    workload = result.workload.get("name", "")
    fig.suptitle(f"{result.name} — {workload}, {result.device}, {result.started}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _throughput(ax: Axes, rows: tuple[Row, ...], value: Callable[[Row], float], label: str) -> None:
    base = baseline(rows)
    values = [value(row) for row in rows]
    ax.barh(range(len(rows)), values, color=[_color(row) for row in rows])
    for i, v in enumerate(values):
        ratio = v / value(base) if base else 1.0
        ax.text(v, i, f" {v:.4g} ({ratio:.2f}×)", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [row.label for row in rows])
    ax.invert_yaxis()
    ax.set_xlabel(label)
    ax.set_xlim(0, max(values) * 1.4 if values else 1)


def _latency(ax: Axes, rows: tuple[Row, ...]) -> None:
    y = range(len(rows))
    ax.barh([i - 0.2 for i in y], [r.latency_ms.p50 for r in rows], height=0.4, label="p50")
    ax.barh([i + 0.2 for i in y], [r.latency_ms.p99 for r in rows], height=0.4, label="p99")
    ax.set_yticks(list(y), [""] * len(rows))
    ax.invert_yaxis()
    ax.set_xlabel("latency (ms, from t=0)")
    ax.legend(loc="lower right")


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
