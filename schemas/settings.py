"""How a config field declares its command-line flag and ``BINBATON_*`` variable.

A config dataclass declares each setting once, on its field::

    batch_size: int = field(default=64, metadata=setting("requests routed per batch",
                                                         parse=positive_int))

``binbaton.service.app.flags`` turns such fields into argparse options and reads the
environment; nothing here does. The parsers turn text into a typed value and raise
ValueError with a readable reason (the caller adds the flag or variable it came from).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

SETTING = "binbaton.setting"  # the key of a field's metadata that holds its Setting


class UserError(Exception):
    """A problem the person running a command can fix. The message names the problem and
    the fix on one line; the ``binbaton`` dispatcher prints it (no traceback unless
    --log-level DEBUG) and exits with ``exit_code``."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A setting has a bad value; the message names where it came from."""

    exit_code = 2  # as argparse exits on a bad command line


class PortInUse(UserError):
    """A port a command would listen on is taken."""


@dataclass(frozen=True)
class Setting:
    help: str
    flag: str | None = None  # None: the field name, dashed (``batch_size`` -> ``batch-size``)
    parse: Callable[[str], Any] | None = None  # None: from choices, else from the field's type
    choices: tuple[str, ...] | None = None


def setting(
    help: str,
    *,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
) -> Mapping[str, Setting]:
    """Field metadata making the field a flag (``field(metadata=setting(...))``)."""
    return {SETTING: Setting(help, flag, parse, choices)}


# ---------------------------------------------------------------------------------------
# Parsers (text -> typed value).


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def tcp_port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError(f"must be a TCP port, 1 to 65535, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


def int_list(text: str) -> tuple[int, ...]:
    """'0,2' -> (0, 2); empty -> ()."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return tuple(int(p) for p in parts)
    except ValueError as exc:
        raise ValueError(f"must be comma-separated integers, got {text!r}") from exc


def non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true/false, got {text!r}")


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {text!r}")
        return text

    return parse
