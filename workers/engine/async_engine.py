"""Asyncio bridge: the engine's step loop runs in its own thread, off the event loop.

``submit`` hands a request to the thread through a lock-protected inbox and returns an
asyncio.Future; the thread resolves it on the loop with ``loop.call_soon_threadsafe``.
``abort`` cancels a request's future at once and hands the abort to the thread through
the same inbox, so submissions and aborts reach the engine in the order they were made.
The loop never waits on model work, so a worker's Kafka heartbeats never stall.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict, deque
from dataclasses import dataclass

from binbaton.workers.engine.engine import Engine
from binbaton.workers.engine.request import GenerationOutput, GenerationRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Abort:
    request_id: str


class AsyncEngine:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._inbox: list[GenerationRequest | _Abort] = []
        self._wake = threading.Condition()
        self._futures: dict[str, deque[asyncio.Future[GenerationOutput]]] = defaultdict(deque)
        self._pending = 0  # touched only on the loop
        self._stopping = False  # finish what is in flight, accept nothing new
        self._halt = False  # exit now, unfinished requests fail
        self._exited: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def num_pending(self) -> int:
        """Submitted and not yet finished."""
        return self._pending

    async def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("AsyncEngine already started")
        self._loop = asyncio.get_running_loop()
        self._exited = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="binbaton-engine", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest) -> asyncio.Future[GenerationOutput]:
        if self._loop is None or self._stopping:
            raise RuntimeError("AsyncEngine is not running")
        if self._error is not None:
            raise RuntimeError("the engine thread failed") from self._error
        future: asyncio.Future[GenerationOutput] = self._loop.create_future()
        self._futures[request.id].append(future)
        self._pending += 1
        with self._wake:
            self._inbox.append(request)
            self._wake.notify()
        return future

    def abort(self, request_id: str) -> bool:
        """Drop a submitted request (call on the loop, like ``submit``): its future is
        cancelled now and the engine thread drops it before its next step, freeing its
        cache. False when no request of that id is pending (unknown, or finished)."""
        waiters = self._futures.pop(request_id, None)
        if not waiters:
            return False
        for future in waiters:
            future.cancel()
        self._pending -= len(waiters)
        with self._wake:
            self._inbox.append(_Abort(request_id))
            self._wake.notify()
        return True

    async def stop(self, timeout: float | None = None) -> None:
        """Finish in-flight work within ``timeout`` seconds, then stop the thread.

        Requests still unfinished after the timeout fail with RuntimeError.
        """
        if self._thread is None or self._exited is None:
            return
        self._stopping = True
        self._notify()
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
        except TimeoutError:
            self._halt = True  # leave the rest unfinished
            self._notify()
            await self._exited.wait()
        await asyncio.to_thread(self._thread.join)

    # ---- engine thread ----------------------------------------------------------------

    def _run(self) -> None:
        error: BaseException = RuntimeError("engine stopped before the request finished")
        try:
            while self._next_batch():
                if self.engine.has_work():
                    self._deliver(self.engine.step())
        except BaseException as exc:  # a bug in the engine: fail every waiter, stop
            log.exception("engine thread failed")
            self._error = error = exc
        assert self._loop is not None
        # Queued after every result this thread delivered, so none of them is failed.
        self._loop.call_soon_threadsafe(self._on_exit, error)

    def _next_batch(self) -> bool:
        """Wait for work; move new requests into the engine. False: time to exit."""
        with self._wake:
            while not (self._inbox or self.engine.has_work() or self._stopping or self._halt):
                self._wake.wait()
            inbox, self._inbox = self._inbox, []
        if self._halt:
            return False
        for item in inbox:
            if isinstance(item, _Abort):
                self.engine.abort(item.request_id)
            else:
                self.engine.add(item)
        return not (self._stopping and not self.engine.has_work())

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify()

    def _deliver(self, outputs: list[GenerationOutput]) -> None:
        assert self._loop is not None
        for output in outputs:
            self._loop.call_soon_threadsafe(self._resolve, output)

    # ---- on the loop ------------------------------------------------------------------

    def _resolve(self, output: GenerationOutput) -> None:
        waiters = self._futures.get(output.id)
        if not waiters:
            return  # already failed by stop(), or aborted
        future = waiters.popleft()
        if not waiters:
            del self._futures[output.id]
        self._pending -= 1
        if not future.done():
            future.set_result(output)

    def _on_exit(self, exc: BaseException) -> None:
        self._fail_all(exc)
        assert self._exited is not None
        self._exited.set()

    def _fail_all(self, exc: BaseException) -> None:
        for waiters in self._futures.values():
            for future in waiters:
                if not future.done():
                    future.set_exception(exc)
        self._futures.clear()
        self._pending = 0
