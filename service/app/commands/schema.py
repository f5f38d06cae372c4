"""``binbaton schema``: the JSON Schema of ``Request`` and ``Result``."""

from __future__ import annotations

import argparse
import json

from binbaton.schemas.codec import json_schema
from binbaton.service.app.command import Command
from binbaton.service.app.flags import Values


def run(args: argparse.Namespace, values: Values) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


COMMAND = Command("schema", (), run)
main = COMMAND.main
