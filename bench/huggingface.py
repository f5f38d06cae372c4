"""The Hugging Face baselines: ``generate`` in static batches, and continuous batching.

Both force each request's output length (the engine bench compares throughput on known
lengths): ``generate`` runs a batch to its longest member (min_new_tokens =
max_new_tokens = the batch's longest target; shorter members' extra tokens are not
counted), continuous batching gets a per-request ``max_new_tokens`` with EOS disabled.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Sequence
from typing import Any

import torch
from binbaton.bench.measure import Measurement
from binbaton.bench.memory import PeakMemory
from binbaton.bench.workload import BenchRequest
from binbaton.workers.engine.loader import DTYPES
from tqdm import tqdm
from transformers import AutoModelForCausalLM, GenerationConfig, LogitsProcessor

NO_EOS = -1  # transformers continuous batching: an EOS id that never matches


def load_model(path: str, device: str, dtype: str) -> Any:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    # transformers' decorators hide PreTrainedModel.to's signature from mypy
    return model.to(device).eval()  # type: ignore[arg-type]


class FirstTokenClock(LogitsProcessor):
    """Records when the first token of a ``generate`` call is being chosen."""

    def __init__(self) -> None:
        self.first: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.first is None:
            self.first = time.perf_counter()
        return scores


@torch.inference_mode()
def run_generate(
    model: Any,
    requests: Sequence[BenchRequest],
    batch: int,
    pad_token_id: int,
    memory: PeakMemory,
    progress: bool = True,
) -> Measurement:
    """Static batches of ``batch`` requests in arrival order, left padded."""
    device = model.device
    memory.reset()
    ttft: list[float] = []
    latency: list[float] = []
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    bar = tqdm(total=len(requests), desc="hf-generate", unit="req", disable=not progress)
    for start in range(0, len(requests), batch):
        group = requests[start : start + batch]
        longest_prompt = max(len(r.prompt_token_ids) for r in group)
        input_ids = torch.full((len(group), longest_prompt), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)  # [b, longest_prompt]
        for row, req in enumerate(group):
            n = len(req.prompt_token_ids)
            input_ids[row, longest_prompt - n :] = torch.tensor(req.prompt_token_ids)
            attention_mask[row, longest_prompt - n :] = 1
        new_tokens = max(r.output_tokens for r in group)
        clock = FirstTokenClock()
        model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            do_sample=False,
            min_new_tokens=new_tokens,
            max_new_tokens=new_tokens,
            pad_token_id=pad_token_id,
            logits_processor=[clock],
        )
        done = time.perf_counter() - t0
        first = (clock.first or time.perf_counter()) - t0
        ttft.extend([first] * len(group))
        latency.extend([done] * len(group))  # a static batch returns with its straggler
        bar.update(len(group))
    bar.close()
    return Measurement(
        elapsed_s=time.perf_counter() - t0,
        output_tokens=sum(r.output_tokens for r in requests),
        ttft_s=ttft,
        latency_s=latency,
        peak_memory_mb=memory.peak_mb(),
        cpu_s=time.process_time() - cpu0,
    )


def continuous_batching_config(batch: int, max_len: int, page_size: int) -> Any:
    """A ContinuousBatchingConfig capped at ``batch`` running requests, cache sized to fit."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    wanted: dict[str, Any] = {
        "max_requests_per_batch": batch,
        "page_size": page_size,
        "block_size": page_size,  # the field's name before transformers 5.17
        "num_blocks": batch * -(-max_len // page_size) + batch,
        "max_batch_tokens": max(512, batch),
    }
    fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    if "page_size" in fields:
        wanted.pop("block_size")
    return ContinuousBatchingConfig(**{k: v for k, v in wanted.items() if k in fields})


@torch.inference_mode()
def run_continuous(
    model: Any,
    requests: Sequence[BenchRequest],
    batch: int,
    memory: PeakMemory,
    page_size: int = 64,
    progress: bool = True,
    timeout_s: float = 3600.0,
) -> Measurement:
    """All requests added at t=0 to transformers' continuous batching manager."""
    max_len = max(len(r.prompt_token_ids) + r.output_tokens for r in requests)
    generation = GenerationConfig(do_sample=False, eos_token_id=NO_EOS, max_new_tokens=1)
    init_kwargs: dict[str, Any] = {"generation_config": generation}
    if "continuous_batching_config" in inspect.signature(model.init_continuous_batching).parameters:
        init_kwargs["continuous_batching_config"] = continuous_batching_config(
            batch, max_len, page_size
        )  # without it (older transformers) the manager sizes its cache itself
    manager = model.init_continuous_batching(**init_kwargs)
    accepts = inspect.signature(manager.add_request).parameters
    manager.start()
    try:
        _warm_up(manager, requests[0], accepts)
        memory.reset()
        t0 = time.perf_counter()
        cpu0 = time.process_time()  # every thread of the process, the manager's included
        for req in requests:
            kwargs: dict[str, Any] = {"request_id": req.id, "max_new_tokens": req.output_tokens}
            if "record_timestamps" in accepts:
                kwargs["record_timestamps"] = True
            if "eos_token_id" in accepts:
                kwargs["eos_token_id"] = NO_EOS
            manager.add_request(list(req.prompt_token_ids), **kwargs)
        results = _collect(manager, {r.id for r in requests}, progress, timeout_s)
        elapsed = time.perf_counter() - t0
        cpu_s = time.process_time() - cpu0
    finally:
        manager.stop(block=True, timeout=10)
    ttft, latency, tokens, failed = [], [], 0, 0
    for result in results.values():
        if result.error is not None:
            failed += 1
            continue
        tokens += len(result.generated_tokens)
        stamps = getattr(result, "timestamps", None)
        ttft.append(stamps[0] - t0 if stamps else float("nan"))
        latency.append(result.lifespan[1] - t0)
    return Measurement(
        elapsed_s=elapsed,
        output_tokens=tokens,
        ttft_s=ttft,
        latency_s=latency,
        peak_memory_mb=memory.peak_mb(),
        failed=failed + len(requests) - len(results),
        cpu_s=cpu_s,
    )


def _warm_up(manager: Any, sample: BenchRequest, accepts: Any) -> None:
    """One short request so cache allocation and first-call costs fall outside the clock."""
    kwargs: dict[str, Any] = {"request_id": "warmup", "max_new_tokens": 2}
    if "eos_token_id" in accepts:
        kwargs["eos_token_id"] = NO_EOS
    manager.add_request(list(sample.prompt_token_ids[:16]), **kwargs)
    _collect(manager, {"warmup"}, progress=False, timeout_s=600.0)


def _collect(manager: Any, ids: set[str], progress: bool, timeout_s: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    with tqdm(total=len(ids), desc="hf-continuous", unit="req", disable=not progress) as bar:
        while len(results) < len(ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"hf continuous batching: {len(results)}/{len(ids)} done")
            result = manager.get_result(timeout=1)
            if result is None:
                if not manager.is_running():
                    raise RuntimeError("hf continuous batching thread stopped unexpectedly")
                continue
            if result.request_id in ids and result.is_finished():
                results[result.request_id] = result
                bar.update(1)
    return results
