"""Wire schemas: msgspec structs for every topic payload, plus their codecs."""

from binbaton.schemas.codec import (
    InvalidMessage,
    dead_letter,
    decode_binned,
    decode_dead_letter,
    decode_request,
    decode_result,
    encode,
    error_result,
    json_schema,
    now_ms,
    recover_id,
)
from binbaton.schemas.messages import (
    BinnedRequest,
    DeadLetter,
    ErrorInfo,
    Request,
    Result,
    Timings,
    Usage,
)

__all__ = [
    "BinnedRequest",
    "DeadLetter",
    "ErrorInfo",
    "InvalidMessage",
    "Request",
    "Result",
    "Timings",
    "Usage",
    "dead_letter",
    "decode_binned",
    "decode_dead_letter",
    "decode_request",
    "decode_result",
    "encode",
    "error_result",
    "json_schema",
    "now_ms",
    "recover_id",
]
