"""Benchmark results: rows, percentiles, and the JSON file layout (bench/README.md,
"Results files").

A run writes ``bench/results/<YYYY-MM-DD>-<device>-<name>.json`` holding ``device``,
``model``, ``workload``, ``started`` and ``rows`` (one per system measured in that run).
Ratios are read between rows of one file. ``read_result`` loads any such file back: the
throughput rows above, or the kernel rows of ``bench kernels`` (one per system, batch and
context, with time and achieved bandwidth); every other field a row carries is kept.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from binbaton.workers.engine.config import POLICIES as ENGINE_POLICIES

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SYSTEMS = ("binbaton", "hf-generate", "hf-continuous", "model", "pipeline")
POLICIES = (*ENGINE_POLICIES, "")  # "": a row of a system without policies
RESULT_FIELDS = ("device", "model", "workload", "started", "rows")
THROUGHPUT_ROW_FIELDS = (
    "system", "policy", "bins", "batch", "output_tokens_per_s", "requests_per_s",
    "ttft_ms", "latency_ms", "peak_memory_mb",
)
KERNEL_ROW_FIELDS = ("system", "batch", "context", "time_us", "achieved_gb_per_s")


@dataclass(frozen=True)
class Percentiles:
    p50: float
    p99: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles:
        if len(values) == 0:
            return cls(float("nan"), float("nan"))
        arr = np.asarray(values, dtype=np.float64)
        return cls(float(np.percentile(arr, 50)), float(np.percentile(arr, 99)))

    def to_json(self) -> dict[str, float]:
        return {"p50": round(self.p50, 3), "p99": round(self.p99, 3)}


@dataclass(frozen=True)
class Row:
    """One system measured in a run (the row fields of a results file, plus extras)."""

    system: str
    policy: str
    bins: int
    batch: int
    output_tokens_per_s: float
    requests_per_s: float
    ttft_ms: Percentiles
    latency_ms: Percentiles
    peak_memory_mb: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise ValueError(f"system must be one of {SYSTEMS}, got {self.system!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.bins < 1 or self.batch < 1:
            raise ValueError(f"bins and batch must be >= 1, got {self.bins}, {self.batch}")

    @property
    def label(self) -> str:
        """Short human name, e.g. 'binbaton multibin-static k=4 (oracle)'."""
        parts = [self.system]
        if self.policy:
            parts.append(self.policy)
        if self.bins > 1:
            parts.append(f"k={self.bins}")
        if "lengths" in self.extra:
            parts.append(f"({self.extra['lengths']})")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        memory = None if self.peak_memory_mb is None else round(self.peak_memory_mb, 2)
        return {
            "system": self.system,
            "policy": self.policy,
            "bins": self.bins,
            "batch": self.batch,
            "output_tokens_per_s": round(self.output_tokens_per_s, 4),
            "requests_per_s": round(self.requests_per_s, 4),
            "ttft_ms": self.ttft_ms.to_json(),
            "latency_ms": self.latency_ms.to_json(),
            "peak_memory_mb": memory,
            **self.extra,
        }


@dataclass(frozen=True)
class BenchResult:
    name: str  # e.g. "engine-azure"; part of the file name
    device: str  # e.g. "cpu", "NVIDIA H100 80GB HBM3"
    model: dict[str, Any]
    workload: dict[str, Any]
    started: str  # ISO time
    rows: tuple[Row, ...]
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "model": self.model,
            "workload": self.workload,
            "started": self.started,
            "rows": [row.to_json() for row in self.rows],
            **({"notes": self.notes} if self.notes else {}),
        }

    def path(self, out_dir: Path) -> Path:
        day = self.started[:10]
        return out_dir / f"{day}-{slug(self.device)}-{slug(self.name)}.json"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def slug(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def length_stats(values: Sequence[int] | np.ndarray) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(arr.mean()), 2),
        "min": float(arr.min()),
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "max": float(arr.max()),
    }


def write_result(result: BenchResult, out_dir: Path = RESULTS_DIR) -> Path:
    """Write the JSON file and return its path (the PNG goes beside it, same stem)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = result.path(out_dir)
    path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return path


def is_kernel_row(row: dict[str, Any]) -> bool:
    """A ``bench kernels`` row (an op timed at one batch and context), not a throughput row."""
    return "achieved_gb_per_s" in row


def read_result(path: Path) -> dict[str, Any]:
    """A results file as written, checked for the fields every reader relies on."""
    data = json.loads(Path(path).read_text())
    missing = [key for key in RESULT_FIELDS if key not in data]
    if missing:
        raise ValueError(f"{path}: not a results file, missing {missing}")
    for i, row in enumerate(data["rows"]):
        kernel = is_kernel_row(row)
        required = KERNEL_ROW_FIELDS if kernel else THROUGHPUT_ROW_FIELDS
        absent = [key for key in required if key not in row]
        if absent:
            raise ValueError(f"{path}: row {i} lacks {absent}")
        if not kernel and row["system"] not in SYSTEMS:
            raise ValueError(f"{path}: row {i} has unknown system {row['system']!r}")
    return data
