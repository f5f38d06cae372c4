"""Wire schemas: strict validation with readable errors, ids recovered from bad payloads."""

from __future__ import annotations

import base64
import time

import msgspec
import pytest
from binbaton.schemas.codec import (
    InvalidMessage,
    dead_letter,
    decode_binned,
    decode_dead_letter,
    decode_request,
    decode_result,
    encode,
    error_result,
    from_openai_batch_line,
    recover_id,
)
from binbaton.schemas.guard import scan_id, too_deep
from binbaton.schemas.messages import BinnedRequest, ErrorInfo, Request, Result


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
    (b'{"id": "a", "prompt": "x", "messages": [{"role": "user", "content": "x"}]}',
     "invalid_request", "exactly one of `prompt`, `prompt_token_ids` and `messages`", "a"),
    (b'{"id": "a", "messages": []}', "invalid_request", "`messages` must not be empty", "a"),
    (b'{"id": "a", "messages": [{"role": "tool", "content": "x"}]}', "invalid_request",
     "$.messages[0].role", "a"),
    (b'{"id": "a", "messages": [{"role": "user"}]}', "invalid_request", "content", "a"),
    (b'{"id": "a", "messages": [{"role": "user", "content": "x", "name": "n"}]}',
     "invalid_request", "name", "a"),
    (b'{"id": "a", "prompt": "x", "stop": ""}', "invalid_request", "`stop`", "a"),
    (b'{"id": "a", "prompt": "x", "stop": 3}', "invalid_request", "$.stop", "a"),
    (b'{"id": "a", "prompt": "x", "n": 2}', "unsupported_n", "one completion", "a"),
    (b'{"id": "a", "prompt": "x", "n": 0}', "unsupported_n", "n is 0", "a"),
    (b'{"id": "a", "prompt": "x", "stream": true}', "unsupported_stream", "whole", "a"),
    (b'{"id": "a", "prompt": "x", "stream": "no"}', "invalid_request", "$.stream", "a"),
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
    assert fields == {"id", "prompt", "prompt_token_ids", "messages", "max_tokens",
                      "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos", "metadata",
                      "model", "user", "n", "stream"}


def test_messages_request_in_the_openai_chat_shape() -> None:
    raw = (b'{"id": "c", "model": "smollm2-135m-instruct", "user": "u1", "n": 1,'
           b' "stream": false, "stop": "\\n\\n", "messages": ['
           b'{"role": "system", "content": "Be brief."},'
           b' {"role": "user", "content": "Capital of France?"},'
           b' {"role": "assistant", "content": "Paris."},'
           b' {"role": "user", "content": "And of Spain?"}]}')
    request = decode_request(raw)
    assert request.prompt is None and request.prompt_token_ids is None
    assert [m.role for m in request.messages or []] == ["system", "user", "assistant", "user"]
    assert request.stop == ["\n\n"] and request.stop_strings == ["\n\n"]
    assert request.metadata == {"model": "smollm2-135m-instruct", "user": "u1"}
    assert request.conversation_text() == "Be brief.\nCapital of France?\nParis.\nAnd of Spain?"
    assert decode_request(encode(request)) == request


def test_stop_as_a_list_and_metadata_keys_win_over_openai_fields() -> None:
    request = decode_request(b'{"id": "s", "prompt": "x", "stop": ["a", "b"], "user": "u",'
                             b' "metadata": {"user": "mine"}}')
    assert request.stop == ["a", "b"] and request.metadata == {"user": "mine"}
    built = Request(id="p", prompt="x", stop="end")  # built in Python: normalised the same way
    assert built.stop == ["end"] and built.conversation_text() is None


def test_prompt_requests_encode_as_before() -> None:
    """The new optional fields stay off the wire unless set (the contract of old requests)."""
    request = Request(id="r", prompt="hi", stop=["x"], metadata={"k": "v"})
    assert encode(request) == b'{"id":"r","prompt":"hi","stop":["x"],"metadata":{"k":"v"}}'


@pytest.mark.parametrize(("line", "expected"), [
    (b'{"custom_id": "b1", "method": "POST", "url": "/v1/chat/completions", "body": '
     b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}}',
     {"id": "b1", "model": "m", "messages": [{"role": "user", "content": "hi"}],
      "max_tokens": 5}),
    (b'{"custom_id": "b2", "method": "POST", "url": "/v1/completions", "body": '
     b'{"prompt": "hi", "id": "ignored"}}', {"id": "b2", "prompt": "hi"}),
])
def test_openai_batch_lines_become_requests(line: bytes, expected: dict) -> None:
    converted = from_openai_batch_line(line)
    assert msgspec.json.decode(converted) == expected
    assert decode_request(converted).id == expected["id"]


@pytest.mark.parametrize("line", [
    b'{"id": "r", "prompt": "hi"}',
    b'{"custom_id": "b", "url": "/v1/embeddings", "body": {"input": "x"}}',
    b'{"custom_id": "b", "url": "/v1/chat/completions", "body": "not an object"}',
    b"{not json",
    b"\xff\xfe",
])
def test_other_lines_are_left_as_they_are(line: bytes) -> None:
    assert from_openai_batch_line(line) == line


# -- guarded decoding: depth on the raw bytes, sizes, integer ranges, duplicate keys --------

DEEP = b"[" * 10_000 + b"]" * 10_000


@pytest.mark.parametrize(("payload", "request_id"), [
    (b'{"id": "d", "prompt": "x", "metadata": ' + DEEP + b"}", "d"),
    (b'{"id": "d", "prompt": "x", "unknown": ' + DEEP + b"}", "d"),
    (b'{"id": "d", "prompt": "x", "unknown": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001,
     "d"),
    (DEEP, None),
    (b'{"id": "d", "prompt": "x", "m": ' + b"[" * 10_000, "d"),  # unbalanced, truncated
    (b'{"id": "d", "prompt": "x", "m": ' + b"[" * 17 + b"]" * 17 + b"}", "d"),
])
def test_deep_nesting_is_refused_before_any_decoder_recurses(payload: bytes,
                                                             request_id: str | None) -> None:
    for decode in (decode_request, decode_binned, decode_result, decode_dead_letter):
        with pytest.raises(InvalidMessage) as caught:
            decode(payload)
        assert caught.value.code == "too_deep"
    assert caught.value.request_id == request_id == recover_id(payload)


def test_depth_counts_no_brackets_inside_strings_and_scans_in_linear_time() -> None:
    assert not too_deep(b'{"p": "' + b"[" * 5000 + b'"}', 16)
    assert not too_deep(b'{"p": "a\\"[[[[[[[[[[[[[[[[[[[[", "q": []}', 16)
    assert not too_deep(b"[" * 16 + b"]" * 16, 16) and too_deep(b"[" * 17 + b"]" * 17, 16)
    assert not too_deep(b"[]" * 100_000, 16)
    # An unterminated string full of escaped quotes: one pass, not one per quote.
    hostile = b'{"a": "' + b'\\"' * 200_000
    start = time.perf_counter()
    assert not too_deep(hostile, 16) and scan_id(hostile, 128) is None
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(("payload", "request_id"), [
    (b'{"id": "t1", "prompt": ', "t1"),  # truncated
    (b'\xef\xbb\xbf{"id": "t2", "prompt": "x"}', "t2"),  # byte-order mark
    (b'{"id": "t3", "prompt": "\xff\xfe"}', "t3"),  # invalid UTF-8 after the id
    (b'{"id": "t4", "prompt": "\\ud800"}', "t4"),  # a lone surrogate escape
    (b'{"request": {"id": "t5"}, "bin": ', "t5"),  # a bin message
    (b'{"x": {"id": "nested"}, "y": ', None),  # not the request's id
    (b'{"id": 5, "prompt": ', None),
    (b'{"id": "a", "id": "b", "p": ', None),  # ambiguous
    (b'{"id": "\\u0074\\u0036", "p": ', "t6"),  # escapes decoded
])
def test_an_id_is_recovered_from_bytes_that_do_not_decode(payload: bytes,
                                                          request_id: str | None) -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode_request(payload)
    # msgspec reports a wrong type or an unknown field before the truncation it reaches.
    assert caught.value.code in ("invalid_json", "invalid_request")
    assert caught.value.request_id == request_id


@pytest.mark.parametrize(("field", "code"), [
    (b'"seed": 18446744073709551616', "out_of_range"),
    (b'"seed": 9223372036854775808', "out_of_range"),
    (b'"seed": -9223372036854775809', "out_of_range"),
    (b'"top_k": 1180591620717411303424, "temperature": 0.7', "out_of_range"),
    (b'"top_k": 2147483648', "out_of_range"),
    (b'"max_tokens": 1180591620717411303424', "max_tokens_too_large"),
    (b'"stop": [' + b",".join([b'"s"'] * 17) + b"]", "field_too_large"),
    (b'"stop": ["' + b"s" * 257 + b'"]', "field_too_large"),
    (b'"metadata": {' + b",".join(b'"k%d": "v"' % i for i in range(65)) + b"}",
     "field_too_large"),
    (b'"metadata": {"k": "' + b"v" * 4097 + b'"}', "field_too_large"),
    (b'"metadata": {"' + b"k" * 257 + b'": "v"}', "field_too_large"),
    (b'"metadata": {"k": {"nested": "v"}}', "invalid_request"),
    (b'"metadata": {"k": "1", "k": "2"}', "invalid_request"),
    (b'"prompt": "again"', "invalid_request"),  # duplicate key
])
def test_sizes_ranges_and_duplicate_keys_are_refused_with_a_code(field: bytes,
                                                                code: str) -> None:
    payload = b'{"id": "r", "prompt": "x", ' + field + b"}"
    with pytest.raises(InvalidMessage) as caught:
        decode_request(payload)
    assert caught.value.code == code and caught.value.request_id == "r", str(caught.value)


def test_the_largest_values_the_engine_holds_are_accepted() -> None:
    request = decode_request(b'{"id": "r", "prompt_token_ids": [2147483647], '
                             b'"seed": 9223372036854775807, "top_k": 2147483647, '
                             b'"max_tokens": 2147483647, "temperature": 1.0, '
                             b'"stop": ["' + b"s" * 256 + b'"]}')
    assert request.seed == 2**63 - 1 and request.top_k == 2**31 - 1
    assert decode_request(b'{"id": "r", "prompt": "x", "seed": -9223372036854775808}').seed \
        == -(2**63)


def test_a_bin_message_gets_the_same_checks() -> None:
    request = Request(id="b", prompt_token_ids=[1, 2], max_tokens=4)
    good = BinnedRequest(request=request, prompt_token_ids=[1, 2], predicted_tokens=4, bin=0,
                         received=1, classified=2)
    assert decode_binned(encode(good)) == good
    for bad, code in [
        (msgspec.structs.replace(good, prompt_token_ids=[1, 2**40]), "out_of_range"),
        (msgspec.structs.replace(good, predicted_tokens=2**70), "out_of_range"),
        (msgspec.structs.replace(good, request=msgspec.structs.replace(request, seed=2**64)),
         "out_of_range"),
    ]:
        with pytest.raises(InvalidMessage) as caught:
            decode_binned(encode(bad))
        assert (caught.value.code, caught.value.request_id) == (code, "b")
    with pytest.raises(InvalidMessage) as caught:
        decode_binned(encode(good)[:-1] + b', "bin": 0}')
    assert (caught.value.code, caught.value.request_id) == ("invalid_request", "b")


def test_messages_are_size_checked_like_a_prompt() -> None:
    turn = b'{"role": "user", "content": "x"}'
    many = b'{"id": "m", "messages": [' + b", ".join([turn] * 1025) + b"]}"
    long = b'{"id": "m", "messages": [{"role": "user", "content": "' + b"x" * (1 << 20) + b'y"}]}'
    for raw in (many, long):
        with pytest.raises(InvalidMessage) as caught:
            decode_request(raw)
        assert caught.value.code == "field_too_large" and caught.value.request_id == "m"
