"""Every setting of the service, and the one place that reads ``BINBATON_*`` variables.

Each command-line flag ``--some-flag`` also reads ``BINBATON_SOME_FLAG``; the command
line wins, then the environment, then the default. A bad value fails loudly and names
the flag or variable it came from. The parsed values build frozen, validated configs:
KafkaConfig (client settings), TopicsConfig (names and partitions), ClassifierConfig,
and the engine's EngineConfig and the worker's WorkerConfig.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from binbaton.schemas.settings import (
    ConfigError,
    boolean,
    int_list,
    non_empty,
    non_negative_int,
    one_of,
    positive_float,
    positive_int,
)
from binbaton.service.classifier.config import ClassifierConfig
from binbaton.service.kafka.config import KafkaConfig
from binbaton.service.kafka.topics import TopicsConfig

ENV_PREFIX = "BINBATON_"


# ---------------------------------------------------------------------------------------
# Flags: one table; the CLI adds a subset of them to each command.


@dataclass(frozen=True)
class Flag:
    name: str  # "bootstrap-servers" -> --bootstrap-servers, BINBATON_BOOTSTRAP_SERVERS
    parse: Callable[[str], Any]
    default: Any
    help: str

    @property
    def option(self) -> str:
        return f"--{self.name}"

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")


DEVICES = ("auto", "cpu", "cuda")

FLAGS: dict[str, Flag] = {
    flag.name: flag
    for flag in [
        Flag("bootstrap-servers", non_empty, None,
             "Kafka bootstrap servers HOST:PORT[,…] (`up`: embedded broker when unset; "
             "other commands: 127.0.0.1:<broker-port>)"),
        Flag("broker-port", positive_int, 9092, "port of the embedded broker"),
        Flag("topic-prefix", non_empty, "binbaton", "prefix of every topic name"),
        Flag("bins", positive_int, 3, "number of length bins k (topics bin.0 … bin.{k-1})"),
        Flag("bin-edges", int_list, None,
             "k-1 increasing upper edges of the bins in predicted tokens, e.g. 64,256 "
             "(default: equal-mass quantiles of the Azure trace's output lengths)"),
        Flag("partitions", positive_int, 2, "partitions of the requests, bin and results topics"),
        Flag("model", non_empty, None, "Hugging Face model id or local checkpoint directory"),
        Flag("device", non_empty, "auto", "auto | cpu | cuda | cuda:N"),
        Flag("dtype", one_of("auto", "float32", "float16", "bfloat16"), "auto",
             "model dtype (auto: float32 on CPU, bfloat16 on CUDA)"),
        Flag("predictor", one_of("auto", "learned", "max_tokens", "oracle"), "auto",
             "length predictor (auto: learned when its trained artifact exists, "
             "else max_tokens)"),
        Flag("predictor-path", non_empty, None,
             "trained model of the learned predictor (default: service/artifacts/)"),
        Flag("predictor-snapshot", non_empty, None,
             "file where the learned predictor keeps what it learned online (restarts resume)"),
        Flag("predictor-learning-rate", positive_float, 0.1,
             "online step size of the learned predictor (normalised LMS: 1 fits each new "
             "example exactly; small values keep a trained model steady)"),
        Flag("binner", one_of("fixed", "adaptive"), "fixed",
             "fixed bin edges, or adaptive equal-mass edges over recent predictions"),
        Flag("max-tokens-limit", positive_int, 4096, "server limit on a request's max_tokens"),
        Flag("max-model-len", positive_int, None,
             "context length the service accepts (default: the model's)"),
        Flag("batch-size", positive_int, 64, "classifier: requests read and routed per batch"),
        Flag("max-request-bytes", positive_int, 1 << 20,
             "largest request message accepted (bytes); larger ones are dead-lettered"),
        Flag("observe-cache", positive_int, 100_000,
             "classifier: requests remembered for learning from their results (LRU)"),
        Flag("workers", positive_int, None,
             "`up`: worker processes (default: one per CUDA device, else 1)"),
        Flag("policy", one_of("static", "multibin-static", "insert", "multibin-insert"),
             "multibin-insert", "engine batching policy"),
        Flag("max-batch", positive_int, None, "engine: most sequences decoded together"),
        Flag("kv-budget-tokens", positive_int, None, "engine: KV cache size in tokens"),
        Flag("block-size", positive_int, None, "engine: tokens per KV cache block"),
        Flag("kernel-backend", one_of("auto", "torch", "triton"), "auto",
             "engine kernels: triton on CUDA when auto"),
        Flag("max-in-flight", positive_int, None,
             "worker: most requests taken from Kafka and not yet answered"),
        Flag("worker-id", non_empty, None, "worker: name written into results (host:pid)"),
        Flag("drain-timeout", positive_float, 30.0,
             "seconds to finish in-flight work on shutdown"),
        Flag("tracing", boolean, True,
             "OpenTelemetry spans to <prefix>.traces (and OTLP when OTEL_EXPORTER_OTLP_ENDPOINT "
             "is set); false turns tracing off"),
        Flag("metrics-port", non_negative_int, 0,
             "Prometheus metrics on this port (0: off); `up`: the classifier's, and worker i "
             "of `up` takes this port + 1 + i"),
        Flag("log-level", one_of("DEBUG", "INFO", "WARNING", "ERROR"), "WARNING", "log level"),
    ]
}


# Which flags each role reads (the CLI adds these groups to its commands).
KAFKA_FLAGS = ("bootstrap-servers", "broker-port", "topic-prefix", "tracing", "log-level")
TOPIC_FLAGS = ("bins", "bin-edges", "partitions")
CLASSIFIER_FLAGS = ("model", "predictor", "predictor-path", "predictor-snapshot",
                    "predictor-learning-rate", "binner",
                    "max-tokens-limit", "max-model-len", "batch-size", "max-request-bytes",
                    "observe-cache", "metrics-port")
ENGINE_FLAGS = ("model", "device", "dtype", "policy", "max-batch", "kv-budget-tokens",
                "block-size", "kernel-backend", "max-model-len")
WORKER_FLAGS = ("max-in-flight", "worker-id", "drain-timeout", "metrics-port")


def unique(*groups: Iterable[str]) -> list[str]:
    """Flag names of several groups, each once, in order."""
    return list(dict.fromkeys(name for group in groups for name in group))


def to_argv(values: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    """Resolved values back into command-line flags (for child processes)."""
    argv: list[str] = []
    for name in names:
        value = values.get(FLAGS[name].dest)
        if value is None:
            continue
        if isinstance(value, tuple):
            value = ",".join(map(str, value))
        argv += [FLAGS[name].option, str(value)]
    return argv


def add_flags(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Add the named flags; their values are resolved later by ``resolve``."""
    for name in names:
        flag = FLAGS[name]
        default = "from $" + flag.env + (f", else {flag.default}" if flag.default else "")
        parser.add_argument(flag.option, dest=flag.dest, default=None, metavar=flag.dest.upper(),
                            help=f"{flag.help} ({default})")


def resolve(
    args: argparse.Namespace | Mapping[str, Any],
    names: Iterable[str],
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Flag values by dest: command line, else ``BINBATON_<FLAG>``, else the default."""
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name in names:
        flag = FLAGS[name]
        raw = given.get(flag.dest)
        source = flag.option
        if raw is None and environ.get(flag.env) is not None:
            raw, source = environ[flag.env], "$" + flag.env
        if raw is None:
            values[flag.dest] = flag.default
            continue
        if not isinstance(raw, str):  # already typed (programmatic callers)
            values[flag.dest] = raw
            continue
        try:
            values[flag.dest] = flag.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}={raw!r}: {exc}") from exc
    return values


def env_flag_names() -> list[str]:
    return [flag.env for flag in FLAGS.values()]


# ---------------------------------------------------------------------------------------
# Configs.


@dataclass(frozen=True)
class ServiceConfig:
    """What every service process shares: where Kafka is and what the topics are called."""

    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    topics: TopicsConfig = field(default_factory=TopicsConfig)


# ---------------------------------------------------------------------------------------
# Builders from resolved flag values (``resolve``'s output).

def bootstrap_of(values: Mapping[str, Any]) -> str:
    return values.get("bootstrap_servers") or f"127.0.0.1:{values.get('broker_port', 9092)}"


def kafka_config(values: Mapping[str, Any], client_id: str = "binbaton") -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=bootstrap_of(values), client_id=client_id)


def topics_config(values: Mapping[str, Any]) -> TopicsConfig:
    edges = values.get("bin_edges")
    num_bins = len(edges) + 1 if edges is not None else values.get("bins", 3)
    if edges is not None and values.get("bins") not in (None, 3, num_bins):
        raise ConfigError(f"--bins {values['bins']} disagrees with --bin-edges {edges} "
                          f"({num_bins} bins)")
    return TopicsConfig(
        prefix=values.get("topic_prefix") or "binbaton",
        num_bins=num_bins,
        partitions=values.get("partitions") or 2,
    )


def default_bin_edges(num_bins: int) -> tuple[int, ...]:
    """Equal-mass edges over the output lengths of the Azure trace slice in the repo."""
    from binbaton.service.app.workload import trace_output_lengths
    from binbaton.service.classifier.bins import BinBoundaries

    return BinBoundaries.equal_mass(trace_output_lengths(), num_bins).edges


def classifier_config(values: Mapping[str, Any]) -> ClassifierConfig:
    topics = topics_config(values)
    edges = values.get("bin_edges")
    if edges is None:
        edges = default_bin_edges(topics.num_bins)
    return ClassifierConfig(
        model=values.get("model") or "",
        bin_edges=tuple(edges),
        predictor=values.get("predictor") or "auto",
        predictor_path=values.get("predictor_path"),
        predictor_snapshot=values.get("predictor_snapshot"),
        predictor_learning_rate=values.get("predictor_learning_rate") or 0.1,
        binner=values.get("binner") or "fixed",
        max_tokens_limit=values.get("max_tokens_limit") or 4096,
        max_model_len=values.get("max_model_len"),
        batch_size=values.get("batch_size") or 64,
        max_request_bytes=values.get("max_request_bytes") or (1 << 20),
        observe_cache=values.get("observe_cache") or 100_000,
    )


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a CUDA device is visible, else 'cpu'."""
    if device != "auto":
        if device != "cpu" and not device.startswith("cuda"):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def engine_config(values: Mapping[str, Any]):  # -> binbaton.workers.engine.config.EngineConfig
    """The worker's engine settings from flags (model, device, dtype, policy, sizes)."""
    from binbaton.workers.engine.config import EngineConfig

    if not values.get("model"):
        raise ConfigError("the worker needs --model (or $BINBATON_MODEL)")
    device = resolve_device(values.get("device") or "auto")
    dtype = values.get("dtype") or "auto"
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "bfloat16"
    optional = {
        "max_batch": values.get("max_batch"),
        "kv_budget_tokens": values.get("kv_budget_tokens"),
        "block_size": values.get("block_size"),
        "max_model_len": values.get("max_model_len"),
    }
    try:
        return EngineConfig(
            model=values["model"],
            device=device,
            dtype=dtype,
            policy=values.get("policy") or "multibin-insert",
            kernel_backend=values.get("kernel_backend") or "auto",
            **{k: v for k, v in optional.items() if v is not None},
        )
    except ValueError as exc:
        raise ConfigError(f"engine settings: {exc}") from exc


def worker_config(values: Mapping[str, Any], bins: Iterable[int]):  # -> WorkerConfig
    """The worker's Kafka-side settings: its bins (indices), topics, flow control."""
    from binbaton.workers.config import WorkerConfig

    optional = {
        "worker_id": values.get("worker_id"),
        "max_in_flight": values.get("max_in_flight"),
        "drain_timeout_s": values.get("drain_timeout"),
    }
    try:
        return WorkerConfig(
            bins=tuple(bins),
            topic_prefix=values.get("topic_prefix") or "binbaton",
            **{k: v for k, v in optional.items() if v is not None},
        )
    except ValueError as exc:
        raise ConfigError(f"worker settings: {exc}") from exc


def resolve_worker_bins(
    given: str | None, environ: Mapping[str, str] | None = None
) -> tuple[int, ...]:
    """``binbaton worker --bins 0,2``: bin indices (also ``$BINBATON_BINS``), required."""
    environ = os.environ if environ is None else environ
    raw, source = given, "--bins"
    if raw is None and environ.get(FLAGS["bins"].env) is not None:
        raw, source = environ[FLAGS["bins"].env], "$" + FLAGS["bins"].env
    if raw is None:
        raise ConfigError("a worker needs --bins (bin indices, e.g. 0,1)")
    try:
        bins = int_list(raw)
    except ValueError as exc:
        raise ConfigError(f"{source}={raw!r}: {exc}") from exc
    if not bins or min(bins) < 0:
        raise ConfigError(f"{source}={raw!r}: must name bin indices >= 0")
    return bins


def tracing_config(values: Mapping[str, Any]):  # -> binbaton.service.tracing.TracingConfig
    from binbaton.service.telemetry.tracing import TracingConfig

    return TracingConfig(enabled=values.get("tracing") is not False)


def metrics_config(values: Mapping[str, Any]):  # -> binbaton.service.metrics.MetricsConfig
    from binbaton.service.telemetry.metrics import MetricsConfig

    try:
        return MetricsConfig(port=values.get("metrics_port") or 0)
    except ValueError as exc:
        raise ConfigError(f"--metrics-port: {exc}") from exc
