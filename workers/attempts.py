"""EngineGate: a message in flight when a worker died runs alone in the engine.

With the attempt records of ``binbaton.service.kafka.attempts``: a message whose record
shows an earlier death enters the engine only once it is empty, and nothing else enters
until it is done, so a second death counts against it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable


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
