"""``binbaton bench {model,engine,pipeline,kernels,host,gpu,report}``: side-by-side benchmarks.

What each measures and the latest figures: bench/README.md. Each benchmark's module is
imported (``importlib``) only when it runs or when the full usage is printed: ``gpu`` runs
on a GPU machine that has only torch, triton and transformers (no matplotlib, msgspec,
aiokafka or OpenTelemetry, which other benchmarks' modules import), and parses its own
arguments.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

COMMANDS = {  # name -> (module under binbaton.bench, help)
    "model": ("model_cli", "simulate the Multi-Bin queueing model over k"),
    "engine": ("engine", "HF generate, HF continuous batching, binbaton policies"),
    "pipeline": ("pipeline", "the workload through Kafka vs the engine alone"),
    "kernels": ("kernels", "decode attention: Triton vs SDPA vs the torch twin"),
    "host": ("host", "host time per decode step, a base commit vs this tree"),
    "gpu": ("gpu", "the one GPU check: kernels, exactness, tok/s vs HF, a profiled step"),
    "report": ("report", "Markdown table of results files"),
}
OWN_PARSER = ("gpu",)  # main(argv) parses its own arguments


def module(name: str) -> Any:
    return importlib.import_module(f"binbaton.bench.{COMMANDS[name][0]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="binbaton bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, summary) in COMMANDS.items():
        if name in OWN_PARSER:
            sub.add_parser(name, help=summary, add_help=False)
        else:
            module(name).add_arguments(sub.add_parser(name, help=summary))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in OWN_PARSER:
        code: int = module(argv[0]).main(argv[1:])
        return code
    args = build_parser().parse_args(argv)
    try:
        code = module(args.command).main(args)
        return code
    except (ValueError, FileNotFoundError) as exc:
        print(f"binbaton bench {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
