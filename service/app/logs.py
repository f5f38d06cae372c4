"""Logging of a ``binbaton`` process: one level, to stderr."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from binbaton.schemas.settings import setting

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class LogConfig:
    level: str = field(default="WARNING", metadata=setting(
        "log level", flag="log-level", choices=LEVELS))


def setup_logging(config: LogConfig) -> None:
    logging.basicConfig(level=config.level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
