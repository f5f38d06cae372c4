"""Encoders and decoders, created once, and readable validation errors."""

from __future__ import annotations

import base64
import time
from typing import Any

import msgspec
from binbaton.schemas.errors import ErrorCode
from binbaton.schemas.messages import (
    BinnedRequest,
    DeadLetter,
    ErrorInfo,
    Request,
    Result,
    Timings,
)

_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(Request)
_binned_decoder = msgspec.json.Decoder(BinnedRequest)
_result_decoder = msgspec.json.Decoder(Result)
_dead_letter_decoder = msgspec.json.Decoder(DeadLetter)
_any_decoder = msgspec.json.Decoder()


class InvalidMessage(ValueError):
    """A payload that does not decode or validate; ``code`` is machine-readable."""

    def __init__(self, code: ErrorCode, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def _decode(decoder: msgspec.json.Decoder, raw: bytes, what: str) -> Any:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidMessage(ErrorCode.INVALID_REQUEST, f"invalid {what}: {exc}",
                             recover_id(raw)) from exc
    except msgspec.DecodeError as exc:
        raise InvalidMessage(ErrorCode.INVALID_JSON,
                             f"{what} is not valid JSON: {exc}") from exc


def decode_request(raw: bytes) -> Request:
    request: Request = _decode(_request_decoder, raw, "request")
    if request.n != 1:
        raise InvalidMessage(ErrorCode.UNSUPPORTED_N,
                             f"n is {request.n}; binbaton returns one completion per request "
                             "(send n requests instead)", request.id)
    if request.stream:
        raise InvalidMessage(ErrorCode.UNSUPPORTED_STREAM,
                             "stream is true; binbaton returns each result whole on the "
                             "results topic", request.id)
    return request


def decode_binned(raw: bytes) -> BinnedRequest:
    return _decode(_binned_decoder, raw, "binned request")


def decode_result(raw: bytes) -> Result:
    return _decode(_result_decoder, raw, "result")


def decode_dead_letter(raw: bytes) -> DeadLetter:
    return _decode(_dead_letter_decoder, raw, "dead letter")


def recover_id(raw: bytes) -> str | None:
    """The request id of a payload that failed validation, if one can be read."""
    try:
        obj = _any_decoder.decode(raw)
    except msgspec.DecodeError:
        return None
    if isinstance(obj, dict) and isinstance(obj.get("id"), str) and 0 < len(obj["id"]) <= 128:
        return obj["id"]
    if isinstance(obj, dict) and isinstance(obj.get("request"), dict):
        inner = obj["request"].get("id")
        if isinstance(inner, str) and 0 < len(inner) <= 128:
            return inner
    return None


OPENAI_BATCH_URLS = ("/v1/chat/completions", "/v1/completions")


def from_openai_batch_line(raw: bytes) -> bytes:
    """An OpenAI batch-file line (``{custom_id, method, url, body}``, url one of
    ``OPENAI_BATCH_URLS``) as a Request's JSON: the body with ``id`` = ``custom_id``.
    Any other line comes back unchanged (the classifier judges it)."""
    try:
        obj = _any_decoder.decode(raw)
    except msgspec.DecodeError:
        return raw
    if not (isinstance(obj, dict) and isinstance(obj.get("custom_id"), str)
            and isinstance(obj.get("body"), dict) and obj.get("url") in OPENAI_BATCH_URLS):
        return raw
    return _encoder.encode(obj["body"] | {"id": obj["custom_id"]})


def now_ms() -> int:
    return int(time.time() * 1000)


def dead_letter(
    raw: bytes | None,
    error: ErrorInfo,
    topic: str,
    partition: int,
    offset: int,
    key: str | None,
    stage: str,
) -> DeadLetter:
    return DeadLetter(
        raw=base64.b64encode(raw or b"").decode("ascii"),
        error=error,
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        stage=stage,
        time=now_ms(),
    )


def error_result(
    request_id: str,
    error: ErrorInfo,
    timings: Timings | None = None,
    metadata: dict[str, str] | None = None,
    bin: int | None = None,
    worker: str | None = None,
) -> Result:
    return Result(
        id=request_id,
        status="error",
        finish_reason="error",
        error=error,
        timings=timings or Timings(),
        metadata=metadata or {},
        bin=bin,
        worker=worker,
    )


def json_schema() -> dict[str, Any]:
    """JSON Schema of Request and Result (``binbaton schema``)."""
    (request_schema, result_schema), components = msgspec.json.schema_components(
        [Request, Result], ref_template="#/$defs/{name}"
    )
    return {"Request": request_schema, "Result": result_schema, "$defs": components}
