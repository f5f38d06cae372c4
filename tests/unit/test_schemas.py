"""Wire schemas: strict validation with readable errors, ids recovered from bad payloads."""

from __future__ import annotations

import base64

import pytest
from binbaton.schemas.codec import (
    InvalidMessage,
    dead_letter,
    decode_dead_letter,
    decode_request,
    decode_result,
    encode,
    error_result,
    recover_id,
)
from binbaton.schemas.messages import ErrorInfo, Request, Result


def test_request_round_trip_and_defaults() -> None:
    request = decode_request(b'{"id": "r", "prompt": "hi"}')
    assert (request.max_tokens, request.temperature, request.top_p, request.top_k) == (
        256, 0.0, 1.0, 0)
    assert request.stop == [] and request.metadata == {} and request.seed is None
    assert decode_request(encode(request)) == request


@pytest.mark.parametrize(("payload", "code", "fragment", "request_id"), [
    (b"{oops", "invalid_json", "not valid JSON", None),
    (b'{"id": "a", "prompt": "x", "max_tokens": "9"}', "invalid_request", "$.max_tokens", "a"),
    (b'{"id": "a"}', "invalid_request", "exactly one of", "a"),
    (b'{"id": "a", "prompt": "x", "prompt_token_ids": [1]}', "invalid_request", "exactly one",
     "a"),
    (b'{"id": "a", "prompt": "x", "top_p": 0}', "invalid_request", "$.top_p", "a"),
    (b'{"id": "a", "prompt": "x", "temperature": -0.5}', "invalid_request", "$.temperature",
     "a"),
    (b'{"id": "a", "prompt_token_ids": [-1]}', "invalid_request", "prompt_token_ids", "a"),
    (b'{"id": "", "prompt": "x"}', "invalid_request", "$.id", None),
    (b'{"prompt": "x"}', "invalid_request", "id", None),
    (b'{"id": "a", "prompt": "x", "extra": 1}', "invalid_request", "extra", "a"),
])
def test_invalid_requests_explain_themselves(payload: bytes, code: str, fragment: str,
                                             request_id: str | None) -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode_request(payload)
    assert caught.value.code == code
    assert fragment in str(caught.value)
    assert caught.value.request_id == request_id


def test_recover_id_from_nested_and_broken_payloads() -> None:
    assert recover_id(b'{"request": {"id": "inner"}}') == "inner"
    assert recover_id(b'{"id": 5}') is None
    assert recover_id(b"\xff") is None


def test_error_result_and_dead_letter_encode_and_decode() -> None:
    error = ErrorInfo(code="prompt_too_long", message="too long")
    result = decode_result(encode(error_result("r", error, metadata={"k": "v"})))
    assert isinstance(result, Result) and result.status == "error"
    assert result.finish_reason == "error" and result.error == error
    letter = decode_dead_letter(encode(dead_letter(b"raw", error, "t", 1, 2, "r", "classifier")))
    assert base64.b64decode(letter.raw) == b"raw" and letter.key == "r"
    assert (letter.topic, letter.partition, letter.offset, letter.stage) == ("t", 1, 2,
                                                                            "classifier")


def test_request_is_a_struct_with_openai_field_names() -> None:
    fields = set(Request.__struct_fields__)
    assert fields == {"id", "prompt", "prompt_token_ids", "max_tokens", "temperature", "top_p",
                      "top_k", "seed", "stop", "ignore_eos", "metadata"}
