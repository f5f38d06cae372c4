"""``binbaton bench {model,engine,pipeline,kernels,host,report}``: side-by-side benchmarks.

What each measures and the latest figures: bench/README.md.
"""

from __future__ import annotations

import argparse
import sys

from binbaton.bench import engine, host, kernels, model_cli, pipeline, report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="binbaton bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    model_cli.add_arguments(
        sub.add_parser("model", help="simulate the Multi-Bin queueing model over k")
    )
    engine.add_arguments(
        sub.add_parser("engine", help="HF generate, HF continuous batching, binbaton policies")
    )
    pipeline.add_arguments(
        sub.add_parser("pipeline", help="the workload through Kafka vs the engine alone")
    )
    kernels.add_arguments(
        sub.add_parser("kernels", help="decode attention: Triton vs SDPA vs the torch twin")
    )
    host.add_arguments(
        sub.add_parser("host", help="host time per decode step, a base commit vs this tree")
    )
    report.add_arguments(sub.add_parser("report", help="Markdown table of results files"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "model":
            return model_cli.main(args)
        if args.command == "engine":
            return engine.main(args)
        if args.command == "pipeline":
            return pipeline.main(args)
        if args.command == "kernels":
            return kernels.main(args)
        if args.command == "host":
            return host.main(args)
        if args.command == "report":
            return report.main(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"binbaton bench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
