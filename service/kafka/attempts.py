"""Per-message delivery attempts that survive a process: a message that kills whoever
serves it must not be retried forever.

Per message (topic, partition, offset), a record on disk counts how many times the message
was taken into processing (the worker's engine, the classifier's routing) without its
outcome being acknowledged: incremented and fsynced before the work starts, removed once
its result, bin message or dead letter is acknowledged. A restarted process (or another on
the same state directory) reads it: a message with ``max_attempts`` records is
dead-lettered as ``poison`` without processing it; one with fewer but some is processed
*alone*, so a death while it runs counts against it only, never against innocent
neighbours that were in flight with it the first time.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import field
from pathlib import Path
from typing import Any, NamedTuple

from binbaton.schemas.settings import positive_int, setting


def state_dir_field() -> Any:
    """The ``--state-dir`` field of every config whose process keeps attempt records."""
    return field(default=None, metadata=setting(
        "directory of the per-message attempt records that stop a message which kills its "
        "process (worker, classifier) from being retried forever (default: "
        "$XDG_STATE_HOME/binbaton, else ~/.local/state/binbaton)"))


def max_attempts_field() -> Any:
    """The ``--max-attempts`` field, beside ``state_dir_field``."""
    return field(default=3, metadata=setting(
        "deliveries of a message during which the process serving it died, after which it "
        "is dead-lettered with code `poison`", parse=positive_int))


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "binbaton"


class MessageKey(NamedTuple):
    topic: str
    partition: int
    offset: int

    @property
    def file_name(self) -> str:
        return f"{self.topic}.{self.partition}.{self.offset}.attempts"


class AttemptJournal:
    """Files under ``directory``, one per message in an engine, holding its attempt count."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory / "attempts"
        self.directory.mkdir(parents=True, exist_ok=True)

    def attempts(self, key: MessageKey) -> int:
        """Times the message entered an engine without its result being published."""
        try:
            text = (self.directory / key.file_name).read_text()
        except FileNotFoundError:
            return 0
        try:
            return int(text)
        except ValueError:  # torn by a crash mid-write: it was being attempted
            return 1

    def begin(self, key: MessageKey) -> int:
        """Count one more attempt, durably, before the message runs. Returns the count."""
        count = self.attempts(key) + 1
        fd = os.open(self.directory / key.file_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o644)
        try:
            os.write(fd, str(count).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return count

    def undo(self, key: MessageKey) -> None:
        """The attempt was stopped on purpose (aborted), not ended by a death."""
        count = self.attempts(key) - 1
        if count <= 0:
            self.clear(key)
            return
        fd = os.open(self.directory / key.file_name, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, str(count).encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def clear(self, key: MessageKey) -> None:
        """Its result (or dead letter) is acknowledged: no more attempts to count."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.directory / key.file_name)
