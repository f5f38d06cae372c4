"""``binbaton demo``: ``up`` + a replayed workload + a summary (``binbaton.service.app.demo``)."""

from __future__ import annotations

import argparse

from binbaton.schemas.settings import ConfigError
from binbaton.service.app.command import Command
from binbaton.service.app.commands.up import SECTIONS
from binbaton.service.app.demo import WORKLOADS, run_demo
from binbaton.service.app.flags import Values
from binbaton.service.app.signals import run_until_signal


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", choices=WORKLOADS, default=WORKLOADS[0],
                        help="chat (default): held-out instructions as user messages to "
                             "smollm2-135m-instruct, the learned predictor learning its "
                             "lengths online; prompts: the same instructions as raw prompts "
                             "to the 2M-parameter demo model; trace: the Azure trace's "
                             "lengths with ignore_eos, routed by the oracle predictor")
    parser.add_argument("--requests", type=int, default=None,
                        help="how many requests (default: 30 chat, 300 prompts, "
                             "200 trace rows)")
    parser.add_argument("--time-scale", type=float, default=None,
                        help="replay the arrivals this many times faster "
                             "(default: squeezed into about 60 s for chat, else 20 s)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="chat, prompts: each request's max_tokens (default 80, 256)")


def run(args: argparse.Namespace, values: Values) -> int:
    for name in ("requests", "time_scale", "max_tokens"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0")
    return run_until_signal(lambda stop, abort: run_demo(
        values, stop, kind=args.workload, requests=args.requests, time_scale=args.time_scale,
        max_tokens=args.max_tokens))


COMMAND = Command("demo", SECTIONS, run, add_arguments)
main = COMMAND.main
