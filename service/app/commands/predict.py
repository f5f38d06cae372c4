"""``binbaton predict``: ``Request`` JSON lines on stdin -> ``{"id", "predicted_tokens",
"bin"}`` lines: the classifier's decision (``decide_guarded``), without Kafka."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from binbaton.schemas.codec import InvalidMessage, decode_request
from binbaton.schemas.messages import Request
from binbaton.service.app.command import Command
from binbaton.service.app.configs import classifier_config
from binbaton.service.app.flags import Values
from binbaton.service.app.sections import CLASSIFIER, LOG, TOPICS
from binbaton.service.classifier.router import Decision, Router, decide_guarded

BATCH = 256  # stdin lines decided together


def run(args: argparse.Namespace, values: Values) -> int:
    router = Router.from_config(classifier_config(values))
    for lines in line_batches(sys.stdin.buffer, BATCH):
        for row in predict_rows(router, lines):
            sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()
    return 0


def line_batches(stream: Any, size: int) -> Iterator[list[bytes]]:
    """Non-blank lines in batches of at most ``size``. A batch also ends where a read
    ends on a line break with nothing more ready (a slow writer gets its answers without
    waiting for a full batch), and at the end of input (the last line needs no newline)."""
    lines: list[bytes] = []
    pending = b""  # a line whose end has not been read yet
    while True:
        chunk = stream.read1(1 << 16)  # what is ready (blocks only while nothing is)
        if chunk:
            complete, _, pending = (pending + chunk).rpartition(b"\n")
        else:
            complete, pending = pending, b""
        lines += [line.strip() for line in complete.split(b"\n") if line.strip()]
        while len(lines) >= size:
            yield lines[:size]
            lines = lines[size:]
        if lines and not pending:
            yield lines
            lines = []
        if not chunk:
            return


def predict_rows(router: Router, lines: Sequence[bytes]) -> list[dict[str, Any]]:
    """One output row per line, in order: the decision, or an error object (a bad line
    never stops the others)."""
    outcomes: list[Decision | InvalidMessage | None] = []
    valid: list[tuple[int, Request]] = []
    for index, line in enumerate(lines):
        try:
            valid.append((index, decode_request(line)))
            outcomes.append(None)
        except InvalidMessage as exc:
            outcomes.append(exc)
    decided = decide_guarded(router, [request for _, request in valid])
    for (index, _), outcome in zip(valid, decided, strict=True):
        outcomes[index] = outcome
    return [row(outcome) for outcome in outcomes if outcome is not None]


def row(outcome: Decision | InvalidMessage) -> dict[str, Any]:
    if isinstance(outcome, Decision):
        return {"id": outcome.request.id, "predicted_tokens": outcome.predicted_tokens,
                "bin": outcome.bin}
    return {"id": outcome.request_id, "error": {"code": outcome.code, "message": str(outcome)}}


COMMAND = Command("predict", (TOPICS.part("num_bins"), CLASSIFIER, LOG), run)
main = COMMAND.main
