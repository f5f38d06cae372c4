"""Raw measurements of one system on one workload, and their reduction to a results row."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from binbaton.bench.results import Percentiles, Row


@dataclass
class Measurement:
    """Times are seconds from the moment every request was submitted (t = 0)."""

    elapsed_s: float
    output_tokens: int  # useful output tokens (each request's target length)
    ttft_s: list[float]
    latency_s: list[float]
    peak_memory_mb: float | None
    failed: int = 0  # requests that came back with an error
    # CPU seconds the measured processes spent (all threads): robust where other work
    # shares the cores, unlike wall time.
    cpu_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.elapsed_s <= 0:
            raise ValueError(f"elapsed time must be > 0, got {self.elapsed_s}")

    def to_row(self, system: str, policy: str, bins: int, batch: int, **extra: Any) -> Row:
        completed = len(self.latency_s)
        return Row(
            system=system,
            policy=policy,
            bins=bins,
            batch=batch,
            output_tokens_per_s=self.output_tokens / self.elapsed_s,
            requests_per_s=completed / self.elapsed_s,
            ttft_ms=Percentiles.of([t * 1000 for t in self.ttft_s if not math.isnan(t)]),
            latency_ms=Percentiles.of([t * 1000 for t in self.latency_s]),
            peak_memory_mb=self.peak_memory_mb,
            extra={
                "elapsed_s": round(self.elapsed_s, 6),
                "completed": completed,
                "output_tokens": self.output_tokens,
                **self._cpu_fields(),
                "failed": self.failed,
                **self.extra,
                **extra,
            },
        )

    def _cpu_fields(self) -> dict[str, float]:
        if not self.cpu_s:
            return {}
        return {
            "cpu_s": round(self.cpu_s, 3),
            "output_tokens_per_cpu_s": round(self.output_tokens / self.cpu_s, 3),
        }
