"""Benchmark workloads: prompt and output lengths, turned into token-id requests.

- ``azure``: (ContextTokens, GeneratedTokens) pairs sampled from the Azure LLM inference
  trace 2023 (conversation), each divided by ``scale`` (a CPU cannot decode the full
  lengths in minutes; ``scale`` is recorded in the results) and clipped to the context.
- ``instructions``: prompts from the instruction/response corpus (GSM8K, GPTeacher), each
  output forced to its reference response's length in the model's tokenizer divided by
  ``scale``: the workload where a text-based length predictor has something to read.
- ``uniform``: prompt and output lengths uniform in [lo, hi] (default [100, 1024], 256
  requests: the common offline throughput benchmark vLLM/nano-vllm report).

Prompts are random token ids (the model is random too); outputs are forced to the target
length (ignore_eos with max_tokens = target), the standard way to benchmark throughput.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from binbaton.bench.results import length_stats

# ../shared/data beside the checkout (where the project's data sets live).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
AZURE_CSV = SHARED_DATA / "azure_llm_2023_conv.csv"
INSTRUCTIONS_JSONL = SHARED_DATA / "instructions.jsonl"
WORKLOADS = ("azure", "uniform", "instructions")
FIRST_PLAIN_TOKEN = 3  # ids 0/1/2 are pad/bos/eos in the tiny checkpoints


@dataclass(frozen=True)
class BenchRequest:
    id: str
    prompt_token_ids: tuple[int, ...]
    output_tokens: int  # target (forced) output length
    prompt: str | None = None  # the prompt text, where the workload has one


@dataclass(frozen=True)
class Workload:
    name: str
    requests: tuple[BenchRequest, ...]
    params: dict[str, Any]

    @property
    def prompt_lengths(self) -> list[int]:
        return [len(r.prompt_token_ids) for r in self.requests]

    @property
    def output_lengths(self) -> list[int]:
        return [r.output_tokens for r in self.requests]

    @property
    def max_output(self) -> int:
        return max(self.output_lengths)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "requests": len(self.requests),
            "prompt_tokens": length_stats(self.prompt_lengths),
            "output_tokens": length_stats(self.output_lengths),
            **self.params,
        }


def read_azure_lengths(path: Path = AZURE_CSV) -> tuple[np.ndarray, np.ndarray]:
    """(ContextTokens, GeneratedTokens) columns of the Azure trace CSV."""
    if not path.exists():
        raise FileNotFoundError(f"Azure trace not found at {path}; pass --trace PATH")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "GeneratedTokens" not in rows[0] or "ContextTokens" not in rows[0]:
        raise ValueError(f"{path} lacks ContextTokens/GeneratedTokens columns")
    prompts = np.array([int(r["ContextTokens"]) for r in rows], dtype=np.int64)
    outputs = np.array([int(r["GeneratedTokens"]) for r in rows], dtype=np.int64)
    return prompts, outputs


def azure_lengths(
    num: int, scale: float, max_len: int, seed: int, path: Path = AZURE_CSV
) -> tuple[np.ndarray, np.ndarray]:
    """``num`` (prompt, output) pairs sampled from the trace, divided by ``scale``."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    prompts, outputs = read_azure_lengths(path)
    pick = np.random.default_rng(seed).choice(len(prompts), size=num, replace=num > len(prompts))
    out = np.maximum(1, np.round(outputs[pick] / scale)).astype(np.int64)
    prompt = np.maximum(1, np.round(prompts[pick] / scale)).astype(np.int64)
    prompt = np.minimum(prompt, max_len - out)  # prompt + output must fit the context
    if (prompt < 1).any():
        raise ValueError(f"context {max_len} too short for the scaled outputs; raise --scale")
    return prompt, out


def uniform_lengths(num: int, lo: int, hi: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 1 <= lo <= hi:
        raise ValueError(f"need 1 <= lo <= hi, got {lo}, {hi}")
    rng = np.random.default_rng(seed)
    return rng.integers(lo, hi + 1, size=num), rng.integers(lo, hi + 1, size=num)


def build_workload(
    name: str,
    num: int,
    vocab_size: int,
    max_len: int,
    seed: int = 0,
    scale: float = 1.0,
    lo: int = 100,
    hi: int = 1024,
    trace: Path = AZURE_CSV,
    tokenizer: Any = None,
) -> Workload:
    if num < 1:
        raise ValueError(f"need at least one request, got {num}")
    if name == "instructions":
        return instructions_workload(num, scale, max_len, seed, tokenizer)
    if name == "azure":
        prompts, outputs = azure_lengths(num, scale, max_len, seed, trace)
        params: dict[str, Any] = {"source": trace.name, "scale": scale, "seed": seed}
    elif name == "uniform":
        prompts, outputs = uniform_lengths(num, lo, hi, seed)
        if (prompts + outputs > max_len).any():
            raise ValueError(f"uniform [{lo}, {hi}] prompt+output exceeds the context {max_len}")
        params = {"range": [lo, hi], "seed": seed}
    else:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {name!r}")
    rng = np.random.default_rng(seed + 1)
    requests = tuple(
        BenchRequest(
            id=f"{name}-{i}",
            prompt_token_ids=tuple(
                int(t) for t in rng.integers(FIRST_PLAIN_TOKEN, vocab_size, size=int(p))
            ),
            output_tokens=int(o),
        )
        for i, (p, o) in enumerate(zip(prompts, outputs, strict=True))
    )
    return Workload(name, requests, params)


def instructions_workload(
    num: int, scale: float, max_len: int, seed: int, tokenizer: Any,
    path: Path = INSTRUCTIONS_JSONL,
) -> Workload:
    """``num`` corpus entries: prompt tokens from the text, output = response tokens / scale."""
    if tokenizer is None:
        raise ValueError("the instructions workload needs the model's tokenizer")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    with path.open() as f:
        entries = [json.loads(line) for line in f if line.strip()]
    pick = np.random.default_rng(seed).choice(len(entries), size=num, replace=num > len(entries))
    requests = []
    for i, index in enumerate(pick):
        entry = entries[int(index)]
        prompt_ids = tokenizer(entry["prompt"], add_special_tokens=False)["input_ids"]
        response_len = len(tokenizer(entry["response"], add_special_tokens=False)["input_ids"])
        output = max(1, round(response_len / scale))
        prompt_ids = prompt_ids[: max(1, max_len - output)] or [FIRST_PLAIN_TOKEN]
        requests.append(
            BenchRequest(f"instructions-{i}", tuple(prompt_ids), output, prompt=entry["prompt"])
        )
    params = {"source": path.name, "scale": scale, "seed": seed,
              "output_lengths": "reference response tokens (model tokenizer) / scale"}
    return Workload("instructions", tuple(requests), params)
