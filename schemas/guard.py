"""Checks on a payload's raw bytes, run before any recursive decoder sees them.

A JSON decoder recurses once per nesting level, so a value nested 10,000 levels deep
raises RecursionError inside it (msgspec, the standard library and any JSON tool alike).
``too_deep`` measures the nesting on the bytes (regular expressions and a running sum, no
recursion), so the codec can refuse such a payload first. ``scan_id`` reads a flat request
id from bytes that do not decode at all (truncated JSON, a byte-order mark, invalid UTF-8
elsewhere in the message).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import accumulate

import msgspec

# A JSON string token: quote, then runs of plain bytes or backslash escapes, then the
# closing quote or the end of the input (so a match never fails and never backtracks: an
# unterminated string cannot make the scan quadratic; a decoder reads it as a string too).
_STRING_PATTERN = rb'"[^"\\]*(?:\\.?[^"\\]*)*"?'
_STRING = re.compile(_STRING_PATTERN, re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [1 if b in b"[{" else -1 for b in range(256)]  # indexed by the remaining bytes
# What matters for finding a key: strings and structural characters (numbers and literals
# are skipped, so a string counts as a key's value only if it follows the ":" directly).
_TOKEN = re.compile(_STRING_PATTERN + rb"|[\[\]{}:,]", re.DOTALL)
_UTF8_BOM = b"\xef\xbb\xbf"
_str_decoder = msgspec.json.Decoder(str)


def too_deep(raw: bytes, limit: int) -> bool:
    """True when brackets outside strings nest deeper than ``limit``.

    Never misses what a JSON decoder would reach before it fails: up to the first error
    both read the same tokens (brackets inside strings do not count)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    if brackets.count(b"[") + brackets.count(b"{") <= limit:
        return False
    # A running sum of +1 per opening and -1 per closing bracket, stopping at the first
    # level past the limit (an unbalanced close makes it JSON no decoder gets past).
    return any(level > limit for level in accumulate(map(_STEP.__getitem__, brackets)))


@dataclass
class _Container:
    name: bytes | None  # the key it is the value of (None: top level or in an array)
    is_object: bool
    key: bytes | None = None  # the object's current key
    expect_key: bool = True


def scan_id(raw: bytes, max_length: int) -> str | None:
    """The request id of a JSON object, read from its bytes: ``"id"`` directly in the
    top-level object, or in its ``"request"`` object (a bin message). None when it is
    absent, not a plain string, ambiguous (two different values) or too long."""
    if raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM):]
    stack: list[_Container] = []
    found: set[str] = set()
    after_colon = -1  # where the last ":" ended
    for match in _TOKEN.finditer(raw):
        token = match.group()
        top = stack[-1] if stack else None
        if token in (b"{", b"["):
            name = top.key if top is not None and top.is_object else None
            stack.append(_Container(name, token == b"{"))
        elif token in (b"}", b"]"):
            if stack:
                stack.pop()
        elif top is None or not top.is_object:
            continue
        elif token == b":":
            top.expect_key = False
            after_colon = match.end()
        elif token == b",":
            top.expect_key, top.key = True, None
        elif top.expect_key:
            top.key = token
        elif top.key == b'"id"' and not raw[after_colon:match.start()].strip():
            value = _string(token)
            if value is not None and 0 < len(value) <= max_length and _id_path(stack):
                found.add(value)
    return found.pop() if len(found) == 1 else None


def _id_path(stack: list[_Container]) -> bool:
    """Directly in the top-level object, or in its "request" object."""
    names = [c.name for c in stack if c.is_object]
    return len(names) == len(stack) and names in ([None], [None, b'"request"'])


def _string(token: bytes) -> str | None:
    try:
        return _str_decoder.decode(token)
    except msgspec.DecodeError:
        return None
