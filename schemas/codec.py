"""Encoders and decoders, created once, and readable validation errors.

Every decode is guarded (README's "Messages"): the nesting depth is checked on the raw bytes
before a recursive decoder sees them; a decoded ``Request`` or ``BinnedRequest`` then has
its sizes and integer ranges checked against what the engine's types hold, and its JSON
objects checked for duplicate keys. Every refusal is an ``InvalidMessage`` with a code and,
when it can be read even from broken bytes, the request id.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable
from typing import Any

import msgspec
from binbaton.schemas.errors import ErrorCode
from binbaton.schemas.guard import scan_id, too_deep
from binbaton.schemas.messages import (
    BinnedRequest,
    ChatMessage,
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

MAX_DEPTH = 16  # a Request nests 2-3 levels, a BinnedRequest one more
MAX_ID_LENGTH = 128
SCAN_ID_BYTES = 64 * 1024  # how far into undecodable bytes an id is looked for
MAX_PROMPT_CHARS = 1 << 20
MAX_PROMPT_TOKEN_IDS = 1 << 20
MAX_MESSAGES = 1024
MAX_STOP = 16
MAX_STOP_CHARS = 256
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_CHARS = 256
MAX_METADATA_VALUE_CHARS = 4096
INT32_END = 2**31  # top_k, max_tokens, token ids, bins: int32 in the engine and kernels
INT64_MIN, INT64_END = -(2**63), 2**63  # seed: a signed 64-bit integer


class InvalidMessage(ValueError):
    """A payload that does not decode or validate; ``code`` is machine-readable."""

    def __init__(self, code: ErrorCode, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def _decode(decoder: msgspec.json.Decoder, raw: bytes, what: str) -> Any:
    if too_deep(raw, MAX_DEPTH):
        raise InvalidMessage(ErrorCode.TOO_DEEP,
                             f"{what} nests deeper than {MAX_DEPTH} levels", recover_id(raw))
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidMessage(ErrorCode.INVALID_REQUEST, f"invalid {what}: {exc}",
                             recover_id(raw)) from exc
    except msgspec.DecodeError as exc:
        raise InvalidMessage(ErrorCode.INVALID_JSON,
                             f"{what} is not valid JSON: {exc}", recover_id(raw)) from exc


def decode_request(raw: bytes) -> Request:
    request: Request = _decode(_request_decoder, raw, "request")
    _check_request(request, "")
    _check_unique_keys(raw, "request", request.id)
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
    binned: BinnedRequest = _decode(_binned_decoder, raw, "binned request")
    request_id = binned.request.id
    _check_request(binned.request, "request.")
    _check_token_ids(binned.prompt_token_ids, "prompt_token_ids", request_id)
    _check_range(binned.predicted_tokens, 0, INT32_END, "predicted_tokens", request_id)
    _check_range(binned.bin, 0, INT32_END, "bin", request_id)
    _check_range(binned.received, 0, INT64_END, "received", request_id)
    _check_range(binned.classified, 0, INT64_END, "classified", request_id)
    _check_unique_keys(raw, "binned request", request_id)
    return binned


def decode_result(raw: bytes) -> Result:
    return _decode(_result_decoder, raw, "result")


def decode_dead_letter(raw: bytes) -> DeadLetter:
    return _decode(_dead_letter_decoder, raw, "dead letter")


def _check_request(request: Request, prefix: str) -> None:
    """Sizes and integer ranges the schema's types leave open; raises InvalidMessage."""
    rid = request.id
    if request.prompt is not None and len(request.prompt) > MAX_PROMPT_CHARS:
        _too_large(f"{prefix}prompt", f"{len(request.prompt)} characters", MAX_PROMPT_CHARS, rid)
    if request.prompt_token_ids is not None:
        _check_token_ids(request.prompt_token_ids, f"{prefix}prompt_token_ids", rid)
    if request.messages is not None:
        _check_messages(request.messages, f"{prefix}messages", rid)
    if request.max_tokens >= INT32_END:
        raise InvalidMessage(ErrorCode.MAX_TOKENS_TOO_LARGE,
                             f"`{prefix}max_tokens` {request.max_tokens} is not below 2^31", rid)
    _check_range(request.top_k, 0, INT32_END, f"{prefix}top_k", rid)
    if request.seed is not None:
        _check_range(request.seed, INT64_MIN, INT64_END, f"{prefix}seed", rid)
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop)
    if len(stops) > MAX_STOP:
        _too_large(f"{prefix}stop", f"{len(stops)} strings", MAX_STOP, rid)
    _check_lengths(stops, MAX_STOP_CHARS, f"{prefix}stop", rid)
    if len(request.metadata) > MAX_METADATA_ENTRIES:
        _too_large(f"{prefix}metadata", f"{len(request.metadata)} entries",
                   MAX_METADATA_ENTRIES, rid)
    _check_lengths(request.metadata, MAX_METADATA_KEY_CHARS, f"{prefix}metadata key", rid)
    _check_lengths(request.metadata.values(), MAX_METADATA_VALUE_CHARS,
                   f"{prefix}metadata value", rid)


def _check_messages(messages: list[ChatMessage], field: str, request_id: str) -> None:
    if len(messages) > MAX_MESSAGES:
        _too_large(field, f"{len(messages)} messages", MAX_MESSAGES, request_id)
    chars = sum(len(message.content) for message in messages)
    if chars > MAX_PROMPT_CHARS:
        _too_large(field, f"{chars} characters of content", MAX_PROMPT_CHARS, request_id)


def _check_token_ids(ids: list[int], field: str, request_id: str) -> None:
    if len(ids) > MAX_PROMPT_TOKEN_IDS:
        _too_large(field, f"{len(ids)} ids", MAX_PROMPT_TOKEN_IDS, request_id)
    if ids and max(ids) >= INT32_END:
        raise InvalidMessage(ErrorCode.OUT_OF_RANGE,
                             f"`{field}` holds {max(ids)}, not below 2^31", request_id)


def _check_range(value: int, low: int, end: int, field: str, request_id: str) -> None:
    if not low <= value < end:
        raise InvalidMessage(ErrorCode.OUT_OF_RANGE,
                             f"`{field}` {value} is outside [{_power(low)}, {_power(end)})",
                             request_id)


def _power(bound: int) -> str:
    """-2^63, 2^31, 0: bounds as people write them."""
    if bound and (abs(bound) & (abs(bound) - 1)) == 0:
        return f"{'-' if bound < 0 else ''}2^{abs(bound).bit_length() - 1}"
    return str(bound)


def _check_lengths(texts: Iterable[str], limit: int, field: str, request_id: str) -> None:
    longest = max((len(t) for t in texts), default=0)
    if longest > limit:
        _too_large(field, f"{longest} characters", limit, request_id)


def _too_large(field: str, size: str, limit: int, request_id: str) -> None:
    raise InvalidMessage(ErrorCode.FIELD_TOO_LARGE,
                         f"`{field}` has {size}; the limit is {limit}", request_id)


def _check_unique_keys(raw: bytes, what: str, request_id: str) -> None:
    """A JSON object with the same key twice is refused: which value counts is ambiguous."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in items]
        if len(set(keys)) != len(keys):
            twice = next(key for key in keys if keys.count(key) > 1)
            raise _DuplicateKey(twice)
        return dict(items)

    try:
        json.loads(raw.decode("utf-8"), object_pairs_hook=pairs)
    except _DuplicateKey as exc:
        # Two different ids: neither is the request's.
        ambiguous = str(exc) == "id" and scan_id(raw[:SCAN_ID_BYTES], MAX_ID_LENGTH) is None
        raise InvalidMessage(ErrorCode.INVALID_REQUEST,
                             f"invalid {what}: the key {str(exc)!r} appears twice in one object",
                             None if ambiguous else request_id) from None
    except ValueError as exc:  # e.g. an integer past the interpreter's digit limit
        raise InvalidMessage(ErrorCode.INVALID_REQUEST, f"invalid {what}: {exc}",
                             request_id) from None


class _DuplicateKey(Exception):
    pass


def recover_id(raw: bytes) -> str | None:
    """The request id of a payload that failed to decode or validate, if one can be read:
    ``id`` at the top level, or ``request.id`` (a bin message); from the bytes themselves
    when they are not JSON."""
    try:
        obj = None if too_deep(raw, MAX_DEPTH) else _any_decoder.decode(raw)
    except msgspec.DecodeError:
        obj = None
    if obj is None:
        return scan_id(raw[:SCAN_ID_BYTES], MAX_ID_LENGTH)
    if isinstance(obj, dict) and _is_id(obj.get("id")):
        return str(obj["id"])
    if isinstance(obj, dict) and isinstance(obj.get("request"), dict):
        inner = obj["request"].get("id")
        if _is_id(inner):
            return str(inner)
    return None


OPENAI_BATCH_URLS = ("/v1/chat/completions", "/v1/completions")


def from_openai_batch_line(raw: bytes) -> bytes:
    """An OpenAI batch-file line (``{custom_id, method, url, body}``, url one of
    ``OPENAI_BATCH_URLS``) as a Request's JSON: the body with ``id`` = ``custom_id``.
    Any other line comes back unchanged (the classifier judges it)."""
    if too_deep(raw, MAX_DEPTH):
        return raw
    try:
        obj = _any_decoder.decode(raw)
    except msgspec.DecodeError:
        return raw
    if not (isinstance(obj, dict) and isinstance(obj.get("custom_id"), str)
            and isinstance(obj.get("body"), dict) and obj.get("url") in OPENAI_BATCH_URLS):
        return raw
    return _encoder.encode(obj["body"] | {"id": obj["custom_id"]})


def key_id(key: bytes | None) -> str | None:
    """A message key as a request id, when it can be one."""
    if not key:
        return None
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if _is_id(text) else None


def _is_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH


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
