"""``binbaton results``: follow the results topic, de-duplicated by id, as JSON lines."""

from __future__ import annotations

import argparse
import asyncio
import sys

from binbaton.schemas.codec import encode
from binbaton.service.app.command import Command
from binbaton.service.app.configs import kafka_config
from binbaton.service.app.flags import Values
from binbaton.service.app.sections import CLIENT, TOPICS
from binbaton.service.app.signals import run_until_signal
from binbaton.service.kafka.client import ResultFollower


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--latest", action="store_true", help="only results from now on")
    parser.add_argument("--count", type=int, default=None, help="exit after this many")
    parser.add_argument("--id", action="append", help="wait for this id (repeatable), then exit")
    parser.add_argument("--timeout", type=float, default=None, help="exit after this long (s)")


def run(args: argparse.Namespace, values: Values) -> int:
    kafka = kafka_config(values, client_id="binbaton-results")
    topic = TOPICS.part("prefix").build(values).results
    wanted = set(args.id or [])

    async def follow(stop: asyncio.Event, abort: asyncio.Event) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.timeout if args.timeout else None
        printed = 0
        async with ResultFollower(kafka, topic, from_beginning=not args.latest) as follower:
            while not stop.is_set():
                for result in await follower.poll():
                    if wanted and result.id not in wanted:
                        continue
                    sys.stdout.write(encode(result).decode() + "\n")
                    sys.stdout.flush()
                    printed += 1
                if wanted and wanted <= follower.seen.keys():
                    return 0
                if args.count and printed >= args.count:
                    return 0
                if deadline is not None and loop.time() > deadline:
                    return 0 if not wanted else missing(wanted - follower.seen.keys())
        return 0

    return run_until_signal(follow)


def missing(ids: set[str]) -> int:
    """Say which ids got no result in time (exit code 1), rather than exit silently."""
    shown = ", ".join(sorted(ids)[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    print(f"binbaton results: no result for {shown} within --timeout: check the id "
          f"(`binbaton produce` prints it) or wait longer", file=sys.stderr)
    return 1


COMMAND = Command("results", CLIENT, run, add_arguments)
main = COMMAND.main
