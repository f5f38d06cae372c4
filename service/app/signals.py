"""How every long-running command stops: the first SIGINT/SIGTERM asks it to stop (finish
what is in flight), a second one to abort (skip the rest of the drain), a third exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from binbaton.schemas.settings import positive_int, setting

log = logging.getLogger("binbaton")

EXIT_ON_SIGNAL = 130
EXIT_ORPHANED = 1
WATCHDOG_INTERVAL_S = 0.5


@dataclass(frozen=True)
class WatchdogConfig:
    parent_pid: int | None = field(default=None, metadata=setting(
        "exit at once when the process of this pid is no longer our parent (`up` passes "
        "its own, besides the parent-death signal)", parse=positive_int))


def watch_parent(config: WatchdogConfig) -> None:
    """With ``parent_pid``: a daemon thread exits this process (as SIGKILL would: nothing
    uncommitted is lost) once that process is no longer its parent."""
    parent = config.parent_pid
    if parent is None:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCHDOG_INTERVAL_S)
        log.error("parent process %d is gone: exiting", parent)
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="binbaton-watchdog", daemon=True).start()

Job = Callable[[asyncio.Event, asyncio.Event], Awaitable[int]]


def run_until_signal(job: Job) -> int:
    """``asyncio.run(job(stop, abort))`` with the signals wired to ``stop`` and ``abort``."""

    async def main() -> int:
        stop, abort = asyncio.Event(), asyncio.Event()

        def on_signal(signum: int) -> None:
            name = signal.Signals(signum).name
            if abort.is_set():
                raise SystemExit(EXIT_ON_SIGNAL)
            if stop.is_set():
                log.warning("second %s: aborting (no more draining)", name)
                abort.set()
            else:
                log.info("%s: stopping", name)
                stop.set()

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        return await job(stop, abort)

    return asyncio.run(main())
