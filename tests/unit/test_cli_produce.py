"""``binbaton produce``: the requests it builds from its flags and from a JSONL file."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from binbaton.schemas.codec import decode_request
from binbaton.schemas.messages import Request
from binbaton.schemas.settings import ConfigError
from binbaton.service.app.commands.produce import add_arguments, messages_of


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_chat_with_a_system_message_and_sampling_flags() -> None:
    (message,) = messages_of(parse("--chat", "Capital of France?", "--system", "Be brief.",
                                   "--id", "c1", "--max-tokens", "9", "--temperature", "0.7",
                                   "--top-p", "0.9", "--top-k", "40", "--seed", "7",
                                   "--stop", "\n\n", "--stop", "END"))
    request = decode_request(message.value)
    assert message.key == b"c1" and request.id == "c1" and request.prompt is None
    assert [(m.role, m.content) for m in request.messages or []] == [
        ("system", "Be brief."), ("user", "Capital of France?")]
    assert (request.max_tokens, request.temperature, request.top_p, request.top_k,
            request.seed, request.stop) == (9, 0.7, 0.9, 40, 7, ["\n\n", "END"])


def test_prompt_request_is_unchanged_by_default() -> None:
    (message,) = messages_of(parse("--prompt", "hello", "--id", "p"))
    assert decode_request(message.value) == Request(id="p", prompt="hello", max_tokens=64)


@pytest.mark.parametrize("argv", [
    ("--prompt", "x", "--chat", "y"),
    ("--prompt", "x", "--system", "s"),
    ("--chat", "x", "--top-p", "0"),
    ("--chat", "x", "--top-k", "-1"),
    ("--prompt", "", "--id", "e"),
    ("--chat", "x", "--stop", ""),
])
def test_bad_flags_are_config_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        messages_of(parse(*argv))


def test_file_lines_are_sent_as_they_are_and_batch_lines_as_requests(tmp_path: Path) -> None:
    lines = [
        b'{"id": "r1", "prompt": "hi"}',
        b"{not json at all",
        b"\xff\xfe binary",
        b'{"custom_id": "b1", "method": "POST", "url": "/v1/chat/completions", '
        b'"body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}',
    ]
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n\n")
    sent = messages_of(parse("--file", str(path)))
    assert [m.key for m in sent] == [b"r1", None, None, b"b1"]
    assert [m.value for m in sent[:3]] == lines[:3]
    batch = decode_request(sent[3].value)
    assert batch.id == "b1" and batch.metadata == {"model": "m"}
