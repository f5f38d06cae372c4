"""A ``binbaton`` command: its flags (from config sections), its own arguments, its run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from binbaton.service.app.commands import SUMMARIES
from binbaton.service.app.flags import Flag, Section, Values, add_flags, merge, resolve
from binbaton.service.app.logs import LogConfig, setup_logging


class Parser(argparse.ArgumentParser):
    """A command line it cannot parse (an unknown option, a missing or malformed value) ends
    as one line naming the problem and where the options are listed, exit code 2, rather
    than argparse's whole usage block above the problem."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (`{self.prog} --help` lists the options)\n")


@dataclass(frozen=True)
class Command:
    name: str
    sections: tuple[Section[Any], ...]
    run: Callable[[argparse.Namespace, Values], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None

    @property
    def flags(self) -> list[Flag]:
        return merge(self.sections)

    def parser(self) -> argparse.ArgumentParser:
        parser = Parser(prog=f"binbaton {self.name}", description=SUMMARIES[self.name])
        add_flags(parser, self.flags)
        if self.add_arguments is not None:
            self.add_arguments(parser)
        return parser

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Parse, resolve, set up logging, run. A bad setting raises ConfigError, which the
        dispatcher (``cli.main``) reports with the other UserErrors."""
        args = self.parser().parse_args(sys.argv[1:] if argv is None else argv)
        values = resolve(args, self.flags)
        if "log_level" in values:
            setup_logging(LogConfig(values["log_level"]))
        return self.run(args, values)
