"""How every long-running command stops: the first SIGINT/SIGTERM asks it to stop (finish
what is in flight), a second one to abort (skip the rest of the drain), a third exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger("binbaton")

EXIT_ON_SIGNAL = 130

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
