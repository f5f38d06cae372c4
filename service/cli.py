"""``binbaton``: the command line (DESIGN.md, "Command line").

Every flag also reads ``BINBATON_<FLAG>`` (resolved in binbaton.service.config).
``bench`` and ``train-predictor`` are dispatched to their own modules.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from binbaton.service.config import (
    CLASSIFIER_FLAGS,
    ENGINE_FLAGS,
    FLAGS,
    KAFKA_FLAGS,
    TOPIC_FLAGS,
    WORKER_FLAGS,
    ConfigError,
    add_flags,
    resolve,
    unique,
)

log = logging.getLogger("binbaton")

UP_FLAGS = unique(KAFKA_FLAGS, TOPIC_FLAGS, CLASSIFIER_FLAGS, ENGINE_FLAGS, WORKER_FLAGS,
                  ("workers",))
COMMAND_FLAGS: dict[str, list[str]] = {
    "up": UP_FLAGS,
    "broker": ["broker-port", "log-level"],
    "topics": unique(KAFKA_FLAGS, TOPIC_FLAGS),
    "classifier": unique(KAFKA_FLAGS, TOPIC_FLAGS, CLASSIFIER_FLAGS),
    "worker": unique(KAFKA_FLAGS, ["partitions"], ENGINE_FLAGS, WORKER_FLAGS),
    "produce": list(KAFKA_FLAGS),
    "results": list(KAFKA_FLAGS),
    "predict": unique(["bins", "bin-edges", "log-level"], CLASSIFIER_FLAGS),
    "demo": UP_FLAGS,
}


# ---------------------------------------------------------------------------------------
# Helpers.


def _setup_logging(values: dict[str, Any]) -> None:
    logging.basicConfig(level=values.get("log_level") or "WARNING", stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_until_signal(job: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run ``job(stop)``; the first SIGINT/SIGTERM sets ``stop``, a third one exits at once."""

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = {"count": 0}

        def on_signal() -> None:
            signals["count"] += 1
            stop.set()
            if signals["count"] >= 3:
                raise SystemExit(130)

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal)
        return await job(stop)

    return asyncio.run(main())


def _values(args: argparse.Namespace) -> dict[str, Any]:
    values = resolve(args, COMMAND_FLAGS[args.command])
    _setup_logging(values)
    return values


# ---------------------------------------------------------------------------------------
# Commands.


def cmd_up(args: argparse.Namespace) -> int:
    from binbaton.service.supervisor import up

    values = _values(args)
    return run_until_signal(lambda stop: up(values, stop))


def cmd_broker(args: argparse.Namespace) -> int:
    from binbaton.service.kafka.broker import EmbeddedBroker

    values = _values(args)
    broker = EmbeddedBroker(port=values["broker_port"], quiet=not args.verbose)

    async def job(stop: asyncio.Event) -> int:
        await asyncio.to_thread(broker.start)
        try:
            print(f"broker ready bootstrap={broker.bootstrap_servers}", flush=True)
            await stop.wait()
        finally:
            await asyncio.to_thread(broker.stop)
        return 0

    return run_until_signal(job)


def cmd_topics(args: argparse.Namespace) -> int:
    from binbaton.service.config import bootstrap_of, topics_config
    from binbaton.service.kafka.topics import create_service_topics

    values = _values(args)
    created = asyncio.run(create_service_topics(bootstrap_of(values), topics_config(values)))
    for name, partitions in created.items():
        print(f"{name}\t{partitions}")
    return 0


def cmd_classifier(args: argparse.Namespace) -> int:
    from binbaton.service.classifier.service import run_classifier
    from binbaton.service.config import (
        classifier_config,
        kafka_config,
        metrics_config,
        topics_config,
        tracing_config,
    )

    values = _values(args)
    kafka = kafka_config(values, client_id="binbaton-classifier")
    topics, config = topics_config(values), classifier_config(values)

    async def job(stop: asyncio.Event) -> int:
        started = asyncio.Event()
        task = asyncio.create_task(run_classifier(kafka, topics, config, stop, started,
                                                  tracing_config(values),
                                                  metrics_config(values)))
        await asyncio.wait([task, asyncio.create_task(started.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        if started.is_set():
            print("classifier ready", flush=True)
        stats = await task
        log.info("classifier stopped: %s", stats)
        return 0

    return run_until_signal(job)


def cmd_worker(args: argparse.Namespace) -> int:
    from binbaton.service.config import (
        engine_config,
        kafka_config,
        metrics_config,
        resolve_worker_bins,
        tracing_config,
        worker_config,
    )
    from binbaton.service.kafka.topics import ensure_topics
    from binbaton.service.telemetry.metrics import Metrics
    from binbaton.service.telemetry.tracing import WORKER_SERVICE, setup_tracing
    from binbaton.workers.worker import run_worker

    values = _values(args)
    bins = resolve_worker_bins(args.bins)
    kafka = kafka_config(values, client_id="binbaton-worker")
    worker = worker_config(values, bins)
    engine = engine_config(values)
    partitions = values["partitions"]
    # Subscribing to a missing topic would auto-create it with the broker's defaults;
    # topics that exist are used as they are.
    plan = {worker.bin_topic(b): partitions for b in bins}
    plan |= {worker.results_topic: partitions, worker.dlq_topic: 1}
    asyncio.run(ensure_topics(kafka.bootstrap_servers, plan, strict=False))
    telemetry = setup_tracing(WORKER_SERVICE, tracing_config(values),
                              bootstrap_servers=kafka.bootstrap_servers,
                              traces_topic=f"{worker.topic_prefix}.traces", model=engine.model,
                              resource_attributes={"service.instance.id": worker.worker_id})
    metrics, metrics_settings = Metrics(model=engine.model), metrics_config(values)
    port = metrics.serve(metrics_settings)
    if port is not None:
        log.info("worker metrics on port %d", port)
    try:
        return run_worker(worker, engine, kafka, telemetry=telemetry,
                          metrics=metrics if port is not None else None)
    finally:
        telemetry.shutdown()
        metrics.close()


def cmd_produce(args: argparse.Namespace) -> int:
    from binbaton.service.app import workload
    from binbaton.service.app.workload import TRACE_SLICE, load_trace
    from binbaton.service.config import kafka_config, tracing_config
    from binbaton.service.kafka import client

    values = _values(args)
    kafka = kafka_config(values, client_id="binbaton-client")
    topic = f"{values['topic_prefix']}.requests"
    sources = sum(x is not None for x in (args.prompt, args.file, args.trace))
    if sources != 1:
        raise ConfigError("give exactly one of --prompt, --file, --trace")
    if args.prompt is not None:
        request = client.prompt_request(args.prompt, max_tokens=args.max_tokens,
                                        request_id=args.id, ignore_eos=args.ignore_eos,
                                        temperature=args.temperature)
        messages = [client.request_message(request)]
    elif args.file is not None:
        handle = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
        with handle:
            lines = [line.rstrip(b"\r\n") for line in handle if line.strip()]
        messages = [client.raw_message(line) for line in lines[: args.count]]
    else:
        rows = load_trace(TRACE_SLICE if args.trace == "slice" else args.trace, limit=args.count)
        messages = workload.trace_requests(
            rows, length_scale=args.length_scale, time_scale=args.time_scale,
            max_tokens_cap=args.max_tokens_cap, context_cap=args.context_cap,
            ignore_eos=args.ignore_eos or args.trace is not None)
    sent = asyncio.run(client.produce(kafka, topic, messages, paced=args.trace is not None,
                                      tracing_config=tracing_config(values)))
    for message in messages:
        print(message.key.decode() if message.key else "-")
    print(f"sent {sent} requests to {topic}", file=sys.stderr)
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from binbaton.schemas.codec import encode
    from binbaton.service.config import kafka_config
    from binbaton.service.kafka.client import ResultFollower

    values = _values(args)
    kafka = kafka_config(values, client_id="binbaton-results")
    topic = f"{values['topic_prefix']}.results"
    wanted = set(args.id or [])

    async def job(stop: asyncio.Event) -> int:
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
                    return 0 if not wanted else 1
        return 0

    return run_until_signal(job)


PREDICT_BATCH = 256  # stdin lines decided together by `binbaton predict`


def cmd_predict(args: argparse.Namespace) -> int:
    from binbaton.service.classifier.router import Router
    from binbaton.service.config import classifier_config

    values = _values(args)
    router = Router.from_config(classifier_config(values))
    for lines in line_batches(sys.stdin.buffer, PREDICT_BATCH):
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


def predict_rows(router: Any, lines: Sequence[bytes]) -> list[dict[str, Any]]:
    """One output row per line, in order: the decision, or an error object (a bad line
    never stops the others)."""
    from binbaton.schemas.codec import InvalidMessage, decode_request
    from binbaton.service.classifier.router import decide_guarded

    outcomes: list[Any] = []
    valid: list[tuple[int, Any]] = []
    for index, line in enumerate(lines):
        try:
            valid.append((index, decode_request(line)))
            outcomes.append(None)
        except InvalidMessage as exc:
            outcomes.append(exc)
    for (index, _), outcome in zip(valid, decide_guarded(router, [r for _, r in valid]),
                                   strict=True):
        outcomes[index] = outcome
    return [_predict_row(outcome) for outcome in outcomes]


def _predict_row(outcome: Any) -> dict[str, Any]:
    from binbaton.service.classifier.router import Decision

    if isinstance(outcome, Decision):
        return {"id": outcome.request.id, "predicted_tokens": outcome.predicted_tokens,
                "bin": outcome.bin}
    return {"id": outcome.request_id, "error": {"code": outcome.code, "message": str(outcome)}}


def cmd_demo(args: argparse.Namespace) -> int:
    from binbaton.service.demo import run_demo

    values = _values(args)
    for name in ("requests", "time_scale", "max_tokens"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0")
    # k from --bins or $BINBATON_BINS, else the workload's own default
    bins_given = args.bins is not None or values["bins"] != FLAGS["bins"].default
    return run_until_signal(lambda stop: run_demo(
        values, stop, kind=args.workload, requests=args.requests, time_scale=args.time_scale,
        max_tokens=args.max_tokens, bins_given=bins_given))


def cmd_schema(args: argparse.Namespace) -> int:
    from binbaton.schemas.codec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


# ---------------------------------------------------------------------------------------
# Parser.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="binbaton",
        description="LLM inference fed by Kafka: multi-bin batching with mid-flight insertion.",
        epilog="Every --flag also reads $BINBATON_<FLAG>. More: binbaton bench --help, "
               "binbaton train-predictor --help.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int],
                help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        add_flags(p, COMMAND_FLAGS.get(name, []))
        p.set_defaults(handler=handler)
        return p

    command("up", cmd_up, "the whole service: broker, topics, classifier, workers")
    broker = command("broker", cmd_broker, "the embedded Kafka-protocol broker alone")
    broker.add_argument("--verbose", action="store_true", help="show the broker's log")
    command("topics", cmd_topics, "create the topics (idempotent)")
    command("classifier", cmd_classifier, "the classifier service alone")
    worker = command("worker", cmd_worker, "one worker for the given bins")
    worker.add_argument("--bins", default=None, metavar="I,J",
                        help="bin indices to serve, e.g. 0,1 (from $BINBATON_BINS)")

    produce = command("produce", cmd_produce, "send requests: a prompt, a JSONL file or a trace")
    produce.add_argument("--prompt", help="one request with this prompt")
    produce.add_argument("--id", help="its id (default: random)")
    produce.add_argument("--max-tokens", type=int, default=64, help="its max_tokens")
    produce.add_argument("--temperature", type=float, default=0.0)
    produce.add_argument("--file", help="Request JSON lines, sent as they are ('-': stdin)")
    produce.add_argument("--trace", metavar="CSV",
                         help="replay an Azure LLM trace CSV ('slice': the copy in the repo)")
    produce.add_argument("--count", type=int, default=None, help="send at most this many")
    produce.add_argument("--time-scale", type=float, default=1.0,
                         help="trace: replay this many times faster")
    produce.add_argument("--length-scale", type=float, default=1.0,
                         help="trace: scale prompt and output lengths by this factor")
    produce.add_argument("--max-tokens-cap", type=int, default=None,
                         help="trace: cap on each request's max_tokens")
    produce.add_argument("--context-cap", type=int, default=None,
                         help="trace: cap on each prompt's length in words")
    produce.add_argument("--ignore-eos", action="store_true",
                         help="always produce max_tokens (trace replay does by default)")

    results = command("results", cmd_results, "follow the results topic (de-duplicated by id)")
    results.add_argument("--latest", action="store_true", help="only results from now on")
    results.add_argument("--count", type=int, default=None, help="exit after this many")
    results.add_argument("--id", action="append", help="wait for this id (repeatable), then exit")
    results.add_argument("--timeout", type=float, default=None, help="exit after this long (s)")

    command("predict", cmd_predict,
            "Request JSON lines on stdin -> {id, predicted_tokens, bin} lines (no Kafka)")
    demo = command("demo", cmd_demo, "up + a replayed workload + a summary table")
    demo.add_argument("--workload", choices=("prompts", "trace"), default="prompts",
                      help="prompts: held-out instruction prompts, the learned predictor and "
                           "the model's own stopping (default); trace: the Azure trace's "
                           "lengths with ignore_eos, routed by the oracle predictor")
    demo.add_argument("--requests", type=int, default=None,
                      help="how many requests (default: 300 prompts, 200 trace rows)")
    demo.add_argument("--time-scale", type=float, default=None,
                      help="replay the arrivals this many times faster "
                           "(default: squeezed into about 20 s)")
    demo.add_argument("--max-tokens", type=int, default=None,
                      help="prompts: each request's max_tokens (default 256)")
    command("schema", cmd_schema, "print the JSON Schema of Request and Result")
    sub.add_parser("bench", help="side-by-side benchmarks (binbaton bench --help)")
    sub.add_parser("train-predictor", help="train the length predictor")
    return parser


def _dispatch(argv: Sequence[str]) -> int | None:
    """``bench`` and ``train-predictor`` belong to other modules: hand them their argv."""
    if argv and argv[0] == "bench":
        from binbaton.bench.cli import main as bench_main

        return bench_main(list(argv[1:]))
    if argv and argv[0] == "train-predictor":
        from binbaton.service.app.train_predictor import main as training_main

        return training_main(list(argv[1:]))
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    dispatched = _dispatch(argv)
    if dispatched is not None:
        return dispatched
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"binbaton {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
