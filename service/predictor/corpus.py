"""The (prompt, response) JSONL corpus for training predictors, and its fixed held-out split."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HELD_OUT_PERCENT = 10  # every run, every model: the same prompts are held out
# The project's data sets are not in the repository: they sit in ../shared/data beside it.
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
INSTRUCTIONS = SHARED_DATA / "instructions.jsonl"


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str
    source: str = ""


def load_examples(path: Path, limit: int | None = None) -> list[Example]:
    """One JSON object per line with string fields ``prompt`` and ``response`` (``source``)."""
    examples: list[Example] = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt, response = row["prompt"], row["response"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: expected {{prompt, response}} JSON") from exc
            if not isinstance(prompt, str) or not isinstance(response, str) or not prompt:
                raise ValueError(f"{path}:{number}: prompt and response must be strings")
            examples.append(Example(prompt, response, str(row.get("source", ""))))
            if limit is not None and len(examples) >= limit:
                break
    return examples


def is_held_out(prompt: str) -> bool:
    """Deterministic: a stable hash of the prompt text, not the order of the file."""
    return zlib.crc32(prompt.encode("utf-8")) % 100 < HELD_OUT_PERCENT


def split_examples(examples: Sequence[Example]) -> tuple[list[Example], list[Example]]:
    """(train, held_out)."""
    train = [ex for ex in examples if not is_held_out(ex.prompt)]
    held_out = [ex for ex in examples if is_held_out(ex.prompt)]
    return train, held_out
