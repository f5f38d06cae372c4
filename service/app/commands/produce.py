"""``binbaton produce``: send requests: one prompt, one chat message, a JSONL file (each line
sent as it is; an OpenAI batch-file line as the request it describes) or a trace replayed
at its arrival times. Prints each request's id."""

from __future__ import annotations

import argparse
import asyncio
import sys

from binbaton.schemas.messages import Request
from binbaton.schemas.settings import ConfigError, UserError
from binbaton.service.app import workload
from binbaton.service.app.command import Command
from binbaton.service.app.configs import kafka_config
from binbaton.service.app.flags import Values
from binbaton.service.app.sections import CLIENT, TOPICS, TRACING
from binbaton.service.kafka import client


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", help="one request with this prompt (tokenized as it is)")
    parser.add_argument("--chat", metavar="TEXT",
                        help="one request whose `messages` are this user message (rendered "
                             "with the model's chat template)")
    parser.add_argument("--system", metavar="TEXT", help="--chat: a system message before it")
    parser.add_argument("--id", help="its id (default: random)")
    parser.add_argument("--max-tokens", type=int, default=64, help="its max_tokens")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest "
                                                             "(0: all)")
    parser.add_argument("--seed", type=int, default=None, help="per-request sampling seed")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="a stop string (repeat for more)")
    parser.add_argument("--file", help="Request JSON lines, sent as they are ('-': stdin); "
                                       "OpenAI batch-file lines (custom_id, url, body) too")
    parser.add_argument("--trace", metavar="CSV",
                        help="replay an Azure LLM trace CSV ('slice': the copy in the repo)")
    parser.add_argument("--count", type=int, default=None, help="send at most this many")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="trace: replay this many times faster")
    parser.add_argument("--length-scale", type=float, default=1.0,
                        help="trace: scale prompt and output lengths by this factor")
    parser.add_argument("--max-tokens-cap", type=int, default=None,
                        help="trace: cap on each request's max_tokens")
    parser.add_argument("--context-cap", type=int, default=None,
                        help="trace: cap on each prompt's length in words")
    parser.add_argument("--ignore-eos", action="store_true",
                        help="always produce max_tokens (trace replay does by default)")


def messages_of(args: argparse.Namespace) -> list[client.Outgoing]:
    sources = sum(x is not None for x in (args.prompt, args.chat, args.file, args.trace))
    if sources != 1:
        raise ConfigError("give exactly one of --prompt, --chat, --file, --trace")
    if args.system is not None and args.chat is None:
        raise ConfigError("--system goes with --chat")
    if args.prompt is not None or args.chat is not None:
        return [client.request_message(one_request(args))]
    if args.file is not None:
        return [client.raw_message(line) for line in file_lines(args.file)[: args.count]]
    return trace_messages(args)


def file_lines(path: str) -> list[bytes]:
    """The non-blank lines of --file (``-``: stdin), each as it is."""
    try:
        handle = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
        with handle:
            return [line.rstrip(b"\r\n") for line in handle if line.strip()]
    except OSError as exc:
        raise UserError(f"cannot read --file {path}: {exc.strerror or exc}; give a file of "
                        f"Request JSON lines, or - to read them from stdin") from exc


def trace_messages(args: argparse.Namespace) -> list[client.Outgoing]:
    path = workload.TRACE_SLICE if args.trace == "slice" else args.trace
    try:
        rows = workload.load_trace(path, limit=args.count)
    except OSError as exc:
        raise UserError(f"cannot read --trace {path}: {exc.strerror or exc}; give an Azure "
                        f"LLM trace CSV, or slice for the copy in the repo") from exc
    except (KeyError, ValueError) as exc:
        reason = f"no column {exc.args[0]}" if isinstance(exc, KeyError) else str(exc)
        raise UserError(f"--trace {path} is not an Azure LLM trace CSV ({reason}); it needs "
                        f"the columns TIMESTAMP, ContextTokens and GeneratedTokens") from exc
    return workload.trace_requests(
        rows, length_scale=args.length_scale, time_scale=args.time_scale,
        max_tokens_cap=args.max_tokens_cap, context_cap=args.context_cap, ignore_eos=True)


def one_request(args: argparse.Namespace) -> Request:
    sampling = client.Sampling(max_tokens=args.max_tokens, temperature=args.temperature,
                               top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                               stop=tuple(args.stop), ignore_eos=args.ignore_eos)
    try:
        if args.chat is not None:
            return client.chat_request(args.chat, sampling, system=args.system,
                                       request_id=args.id)
        return client.text_request(args.prompt, sampling, request_id=args.id)
    except ValueError as exc:  # InvalidMessage, or Request's own checks
        raise ConfigError(str(exc)) from exc


REQUESTS_WAIT_S = 5.0  # how long produce waits for the requests topic (up creating it)


def run(args: argparse.Namespace, values: Values) -> int:
    messages = messages_of(args)  # a usage or file problem first, before the broker's
    kafka = kafka_config(values, client_id="binbaton-client")
    topic = TOPICS.part("prefix").build(values).requests
    # Producing creates a missing topic on the embedded broker (and on Kafka with
    # auto-create): nothing would ever read it, so a wrong prefix must not pass silently.
    asyncio.run(client.wait_for_topic(kafka.bootstrap_servers, topic, timeout=REQUESTS_WAIT_S))
    sent = asyncio.run(client.produce(kafka, topic, messages, paced=args.trace is not None,
                                      tracing_config=TRACING.build(values)))
    for message in messages:
        print(message.key.decode() if message.key else "-")
    print(f"sent {sent} request{'' if sent == 1 else 's'} to {topic}", file=sys.stderr)
    return 0


COMMAND = Command("produce", CLIENT, run, add_arguments)
main = COMMAND.main
