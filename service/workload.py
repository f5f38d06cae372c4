"""Workloads from the Azure LLM inference trace (conversation, 2023): arrivals and lengths.

The repo keeps the first 1,000 rows of ``azure_llm_2023_conv.csv`` (Patel et al.,
"Splitwise", ISCA 2024; CC BY 4.0) in ``service/data/`` so the demo runs without
the shared data folder.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

TRACE_SLICE = Path(__file__).parent / "data" / "azure_llm_2023_conv_slice.csv"


@dataclass(frozen=True)
class TraceRow:
    arrival_s: float  # seconds since the trace's first request
    context_tokens: int
    generated_tokens: int


def _parse_time(text: str) -> datetime:
    # "2023-11-16 18:15:46.6805900": seven fractional digits; datetime takes six.
    head, _, frac = text.strip().partition(".")
    return datetime.fromisoformat(f"{head}.{(frac or '0')[:6].ljust(6, '0')}")


def load_trace(path: str | Path = TRACE_SLICE, limit: int | None = None) -> list[TraceRow]:
    """Rows of an Azure trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens), in order."""
    rows: list[TraceRow] = []
    start: datetime | None = None
    with open(path, newline="") as handle:
        for record in csv.DictReader(handle):
            stamp = _parse_time(record["TIMESTAMP"])
            start = start or stamp
            rows.append(TraceRow(
                arrival_s=(stamp - start).total_seconds(),
                context_tokens=int(record["ContextTokens"]),
                generated_tokens=int(record["GeneratedTokens"]),
            ))
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise ValueError(f"trace {path} has no rows")
    return rows


@cache
def trace_output_lengths() -> tuple[int, ...]:
    """GeneratedTokens of the trace slice kept in the repo."""
    return tuple(row.generated_tokens for row in load_trace())


def scale_length(tokens: int, factor: float, floor: int = 1) -> int:
    """A trace length scaled down to this machine (at least ``floor``)."""
    return max(floor, round(tokens * factor))
