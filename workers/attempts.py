"""Poison pills that kill the process: per-message attempt records, and running suspects alone.

A message that crashes the worker (a native fault, an abort, the OOM killer) is redelivered
to the restarted worker, which would crash again, forever. So, per message (topic,
partition, offset) the worker keeps a record on disk of how many times the message entered
its engine without its result being published: incremented and fsynced before it enters,
removed once its result is acknowledged. A restarted worker (or another worker on the same
state directory) reads it: a message with ``max_attempts`` records is dead-lettered as
``poison`` without running it; one with fewer but some runs *alone* (``EngineGate``), so a
crash while it runs counts against it only, never against innocent neighbours that were in
flight with it the first time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import NamedTuple


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


class EngineGate:
    """Who may be in the engine: any number of ordinary messages, or one suspect alone."""

    def __init__(self) -> None:
        self._inside = 0
        self._solo = False  # a suspect waits for the engine to empty, or runs
        self._change: asyncio.Future[None] | None = None

    @property
    def inside(self) -> int:
        return self._inside

    @contextlib.asynccontextmanager
    async def enter(self, alone: bool) -> AsyncIterator[None]:
        await self._until(lambda: not self._solo)
        if alone:
            self._solo = True
            try:
                await self._until(lambda: self._inside == 0)
            except BaseException:
                self._solo = False
                self._changed()
                raise
        self._inside += 1
        try:
            yield
        finally:
            self._inside -= 1
            if alone:
                self._solo = False
            self._changed()

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            if self._change is None:
                self._change = asyncio.get_running_loop().create_future()
            await asyncio.wait([self._change])  # a cancelled waiter leaves it pending

    def _changed(self) -> None:
        change, self._change = self._change, None
        if change is not None and not change.done():
            change.set_result(None)
