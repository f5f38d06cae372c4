"""Workloads: the Azure LLM inference trace (arrivals and lengths) and instruction prompts,
and the requests made from them (``binbaton produce --trace``, ``binbaton demo``).

The repo keeps, in ``service/data/`` (see its README), so the demo runs without the shared
data folder: the first 1,000 rows of ``azure_llm_2023_conv.csv`` (Patel et al.,
"Splitwise", ISCA 2024; CC BY 4.0), and a sample of the instruction corpus's held-out
prompts (``corpus.is_held_out``: never used to train the demo model or the predictor).
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

from binbaton.schemas.messages import Request
from binbaton.service.kafka.client import Outgoing, request_message
from binbaton.service.predictor.corpus import Example, load_examples, split_examples

DATA_DIR = Path(__file__).resolve().parents[1] / "data"  # service/data/
TRACE_SLICE = DATA_DIR / "azure_llm_2023_conv_slice.csv"
PROMPT_SLICE = DATA_DIR / "instructions_held_out.jsonl"

# Words for synthetic prompts of a given length (trace replay): common English, so any
# tokenizer spends about one token per word.
WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "then", "runs",
    "far", "away", "from", "home", "to", "see", "what", "is", "new", "in", "town", "today",
    "with", "friends", "who", "like", "tea", "cake", "rain", "sun", "sea", "song",
)


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


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    source: str  # gsm8k | gpteacher-roleplay | gpteacher-toolformer


def load_prompts(path: str | Path = PROMPT_SLICE, limit: int | None = None) -> list[PromptRow]:
    """Rows ``{"source", "prompt"}`` of a prompt JSONL file, in order."""
    rows: list[PromptRow] = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                row = PromptRow(prompt=record["prompt"], source=record.get("source", ""))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: expected a {{source, prompt}} object") from exc
            if not isinstance(row.prompt, str) or not row.prompt:
                raise ValueError(f"{path}:{number}: prompt must be a non-empty string")
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise ValueError(f"prompt file {path} has no rows")
    return rows


def sample_by_source(examples: Sequence[Example], count: int, seed: int = 0) -> list[Example]:
    """``count`` examples, each source in proportion to its share, shuffled (seeded)."""
    by_source: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_source[example.source].append(example)
    rng = random.Random(seed)
    picked: list[Example] = []
    for source in sorted(by_source):
        group = by_source[source]
        share = round(count * len(group) / len(examples))
        picked += rng.sample(group, min(share, len(group)))
    rng.shuffle(picked)
    return picked[:count]


def write_prompt_slice(corpus: Path, out: Path = PROMPT_SLICE, count: int = 300,
                       seed: int = 0) -> int:
    """Keep ``count`` held-out prompts of ``corpus`` (instructions.jsonl) in ``out``."""
    _, held_out = split_examples(load_examples(corpus))
    picked = sample_by_source(held_out, count, seed)
    with open(out, "w", encoding="utf-8") as handle:
        for example in picked:
            handle.write(json.dumps({"source": example.source, "prompt": example.prompt}) + "\n")
    return len(picked)


def synthetic_prompt(words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(1, words)))


def trace_requests(
    rows: Sequence[TraceRow],
    length_scale: float = 1.0,
    context_scale: float | None = None,
    max_tokens_cap: int | None = None,
    context_cap: int | None = None,
    time_scale: float = 1.0,
    ignore_eos: bool = True,
    id_prefix: str = "trace",
    seed: int = 0,
) -> list[Outgoing]:
    """The trace as requests: arrivals divided by ``time_scale`` (2 = twice as fast),
    output lengths (max_tokens and ``metadata.length_hint``) and prompt lengths scaled
    down for this machine. ``ignore_eos`` makes each answer exactly its trace length."""
    if time_scale <= 0 or length_scale <= 0:
        raise ValueError("time_scale and length_scale must be > 0")
    context_scale = length_scale if context_scale is None else context_scale
    rng = random.Random(seed)
    messages: list[Outgoing] = []
    for index, row in enumerate(rows):
        max_tokens = scale_length(row.generated_tokens, length_scale)
        if max_tokens_cap is not None:
            max_tokens = min(max_tokens, max_tokens_cap)
        words = scale_length(row.context_tokens, context_scale)
        if context_cap is not None:
            words = min(words, context_cap)
        request = Request(
            id=f"{id_prefix}-{index:05d}",
            prompt=synthetic_prompt(words, rng),
            max_tokens=max_tokens,
            ignore_eos=ignore_eos,
            metadata={"length_hint": str(max_tokens), "trace_row": str(index)},
        )
        messages.append(request_message(request, at_s=row.arrival_s / time_scale))
    return messages
