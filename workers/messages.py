"""The worker's side of the wire: BinnedRequest -> GenerationRequest, GenerationOutput -> Result.

Pure functions (no Kafka, no engine), so the Kafka boundary stays thin and testable.
"""

from __future__ import annotations

from collections.abc import Iterable

from binbaton.schemas.messages import BinnedRequest, ErrorInfo, Result, Timings, Usage
from binbaton.workers.engine.request import GenerationOutput, GenerationRequest, SamplingParams

# W3C trace context headers, passed from the input message to the result unchanged.
TRACE_HEADERS = ("traceparent", "tracestate")

Headers = list[tuple[str, bytes]]


def to_generation_request(binned: BinnedRequest) -> GenerationRequest:
    """The engine's request; raises ValueError for values the engine cannot take."""
    request = binned.request
    if not binned.prompt_token_ids:
        raise ValueError("binned request has no prompt_token_ids")
    sampling = SamplingParams(
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        seed=request.seed,
        stop=tuple(request.stop_strings),
        ignore_eos=request.ignore_eos,
    )
    return GenerationRequest(
        id=request.id,
        prompt_token_ids=tuple(binned.prompt_token_ids),
        sampling=sampling,
        bin=binned.bin,
        predicted_tokens=binned.predicted_tokens,
    )


def same_request(a: GenerationRequest, b: GenerationRequest) -> bool:
    """The same generation (a redelivered copy), whatever bin the classifier chose."""
    return (a.id, a.prompt_token_ids, a.sampling) == (b.id, b.prompt_token_ids, b.sampling)


def unix_ms(seconds: float | None) -> int | None:
    """Unix seconds (engine) -> unix milliseconds (wire); None/0 mean "never happened"."""
    return int(seconds * 1000) if seconds else None


def build_result(binned: BinnedRequest, output: GenerationOutput, worker_id: str) -> Result:
    """The Result of a finished sequence, ok or error (an engine error output)."""
    request = binned.request
    timings = Timings(
        received=binned.received,
        classified=binned.classified,
        admitted=unix_ms(output.admitted_at),
        first_token=unix_ms(output.first_token_at),
        finished=unix_ms(output.finished_at),
    )
    error = None
    if output.error is not None:
        error = ErrorInfo(code=output.error.code, message=output.error.message)
    return Result(
        id=request.id,
        status="ok" if error is None else "error",
        text=output.text,
        token_ids=list(output.token_ids),
        finish_reason="error" if error is not None else output.finish_reason,
        usage=Usage(prompt_tokens=output.prompt_tokens, completion_tokens=len(output.token_ids)),
        bin=binned.bin,
        predicted_tokens=binned.predicted_tokens,
        worker=worker_id,
        metadata=dict(request.metadata),
        timings=timings,
        error=error,
    )


def trace_headers(headers: Iterable[tuple[str, bytes]] | None) -> Headers:
    """The W3C trace context headers of an input message, to copy onto its outputs."""
    return [(key, value) for key, value in headers or () if key in TRACE_HEADERS]
