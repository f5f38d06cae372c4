"""Stopping a long-running command: the first signal stops, a second aborts; `up` passes the
second one on to its workers."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

from binbaton.service.app.signals import run_until_signal
from binbaton.service.app.supervisor import WorkerProcess

# A stand-in worker: the first SIGTERM starts a drain that never ends, a second ends it.
DRAINING_CHILD = """
import signal, sys, time
signals = []
signal.signal(signal.SIGTERM, lambda *_: signals.append(1) if not signals else sys.exit(3))
print("worker ready", flush=True)
while True:
    time.sleep(0.05)
"""


def test_first_signal_stops_and_second_aborts() -> None:
    seen: list[str] = []

    async def job(stop: asyncio.Event, abort: asyncio.Event) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 5)
        seen.append("stop")
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.wait_for(abort.wait(), 5)
        seen.append("abort")
        return 7

    assert run_until_signal(job) == 7
    assert seen == ["stop", "abort"]


async def test_an_aborting_up_sends_its_draining_worker_a_second_sigterm() -> None:
    worker = WorkerProcess(argv=[sys.executable, "-c", DRAINING_CHILD], env=dict(os.environ),
                           name="w")
    await worker.start()
    await asyncio.wait_for(worker.ready.wait(), 30)
    abort = asyncio.Event()
    stopping = asyncio.create_task(worker.stop(timeout=30, abort=abort))
    await asyncio.sleep(0.5)
    assert not stopping.done()  # draining after the first SIGTERM
    started = time.monotonic()
    abort.set()
    await asyncio.wait_for(stopping, 10)
    assert time.monotonic() - started < 5
    assert worker.process is not None and worker.process.returncode == 3
