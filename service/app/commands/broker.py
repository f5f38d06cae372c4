"""``binbaton broker``: the embedded Kafka-protocol broker alone, until a signal."""

from __future__ import annotations

import argparse
import asyncio

from binbaton.service.app.command import Command
from binbaton.service.app.flags import Values
from binbaton.service.app.sections import BROKER, LOG
from binbaton.service.app.signals import run_until_signal
from binbaton.service.kafka.broker import EmbeddedBroker


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="show the broker's log")


def run(args: argparse.Namespace, values: Values) -> int:
    broker = EmbeddedBroker(port=BROKER.build(values).port, quiet=not args.verbose)

    async def serve(stop: asyncio.Event, abort: asyncio.Event) -> int:
        await asyncio.to_thread(broker.start)
        try:
            print(f"broker ready bootstrap={broker.bootstrap_servers}", flush=True)
            await stop.wait()
        finally:
            await asyncio.to_thread(broker.stop)
        return 0

    return run_until_signal(serve)


COMMAND = Command("broker", (BROKER, LOG), run, add_arguments)
main = COMMAND.main
