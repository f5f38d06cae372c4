"""``binbaton``: the command line. Each command lives in its own module
(``binbaton.service.app.commands``), imported when it runs; ``bench`` is
``binbaton.bench.cli``. Every flag also reads ``BINBATON_<FLAG>`` (``flags``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

from binbaton.schemas.settings import UserError
from binbaton.service.app.command import Parser
from binbaton.service.app.commands import SUMMARIES, module_of
from binbaton.service.app.flags import Flag


def overview() -> argparse.ArgumentParser:
    parser = Parser(
        prog="binbaton",
        description="LLM inference fed by Kafka: multi-bin batching with mid-flight insertion.",
        epilog="Every --flag also reads $BINBATON_<FLAG>. More: binbaton COMMAND --help.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary in SUMMARIES.items():
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def command_flags(name: str) -> list[Flag]:
    """The flags of a command (what its ``--help`` lists and its environment may set)."""
    flags: list[Flag] = importlib.import_module(module_of(name)).COMMAND.flags
    return flags


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. A ``UserError`` (a bad setting, a model that cannot load, a port in
    use, no broker at the address, …) ends as one line naming the problem and the fix, and
    its exit code (2: a bad setting; 1: the rest); the traceback only at --log-level DEBUG."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overview().parse_args(argv[:1])  # --help, or no/unknown command: usage and exit
    try:
        code: int = importlib.import_module(module_of(argv[0])).main(argv[1:])
    except UserError as exc:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            traceback.print_exception(exc)
        print(f"binbaton {argv[0]}: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return code


if __name__ == "__main__":
    sys.exit(main())
