"""The configs a command needs, built from its resolved flag values, where one flag's value
depends on another's: the embedded broker's address, the number of bins from the edges,
equal-mass default edges, and the engine's ``auto`` device and dtype."""

from __future__ import annotations

import importlib.util
import os

from binbaton.schemas.settings import ConfigError
from binbaton.schemas.topics import TopicNames
from binbaton.service.app.flags import Values
from binbaton.service.app.sections import AUTO, CLASSIFIER, ENGINE, KAFKA, TOPICS, WORKER
from binbaton.service.app.workload import trace_output_lengths
from binbaton.service.classifier.bins import BinBoundaries
from binbaton.service.classifier.config import ClassifierConfig
from binbaton.service.kafka.broker import DEFAULT_PORT
from binbaton.service.kafka.config import KafkaConfig, check_reachable, embedded_bootstrap
from binbaton.service.kafka.topics import TopicsConfig
from binbaton.workers.config import WorkerConfig
from binbaton.workers.engine.config import EngineConfig


def uses_embedded_broker(values: Values) -> bool:
    """No --bootstrap-servers: the embedded broker on this machine (``up`` starts it)."""
    return "bootstrap_servers" not in values.given


def kafka_config(values: Values, client_id: str) -> KafkaConfig:
    """The Kafka settings of a command; raises BrokerUnreachable (one line, exit 1) when
    nothing answers at the bootstrap address, before any client retries."""
    embedded = uses_embedded_broker(values)
    bootstrap = (embedded_bootstrap(values.get("broker_port") or DEFAULT_PORT)
                 if embedded else values["bootstrap_servers"])
    config = KAFKA.build(values, bootstrap_servers=bootstrap, client_id=client_id)
    check_reachable(config.bootstrap_servers, embedded)
    return config


def topics_config(values: Values) -> TopicsConfig:
    """Topic names and partitions; with --bin-edges, k is the number of edges + 1."""
    edges = values.get("bin_edges")
    if edges is None:
        return TOPICS.build(values)
    num_bins = len(edges) + 1
    if "bins" in values.given and values["bins"] != num_bins:
        bins, shown = values["bins"], ",".join(map(str, edges))
        raise ConfigError(f"--bins {bins} disagrees with --bin-edges {shown} ({num_bins} bins): "
                          f"give {bins - 1} edges for {bins} bins, or --bins {num_bins}, "
                          f"or leave one of them out")
    return TOPICS.build(values, num_bins=num_bins)


def default_bin_edges(num_bins: int) -> tuple[int, ...]:
    """Equal-mass edges over the output lengths of the Azure trace slice in the repo."""
    return BinBoundaries.equal_mass(trace_output_lengths(), num_bins).edges


def classifier_config(values: Values) -> ClassifierConfig:
    num_bins = topics_config(values).num_bins  # also checks --bins against --bin-edges
    edges = values.get("bin_edges")
    if edges is None:
        edges = default_bin_edges(num_bins)
    return CLASSIFIER.build(values, bin_edges=edges)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a CUDA device is visible, else 'cpu'."""
    if device != AUTO:
        check_cuda(device)
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_cuda(device: str) -> None:
    """A CUDA device this machine does not have is a setting to fix (`up` would start no
    worker at all, a worker would die with torch's traceback)."""
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(device.partition(":")[2] or 0) < count:
        return
    built = "" if torch.backends.cuda.is_built() else ", a torch built without CUDA"
    others = f" or cuda:0 to cuda:{count - 1}" if count else ""
    raise ConfigError(f"--device {device}: this machine has {count} CUDA device(s){built}; "
                      f"give --device auto or cpu{others}")


def engine_config(values: Values) -> EngineConfig:
    """The engine's settings, with ``auto`` device and dtype resolved for this machine."""
    device = resolve_device(values.get("device") or AUTO)
    dtype = values.get("dtype") or AUTO
    if dtype == AUTO:
        dtype = "float32" if device == "cpu" else "bfloat16"
    if values.get("kernel_backend") == "triton":
        # As kernels.ops.triton_available decides, without importing torch or triton here.
        usable = device.startswith("cuda") or os.environ.get("TRITON_INTERPRET") == "1"
        if not usable or importlib.util.find_spec("triton") is None:
            raise ConfigError(f"--kernel-backend triton needs triton and a CUDA device (or "
                              f"TRITON_INTERPRET=1 on the CPU), and the device is {device}: "
                              f"give --kernel-backend auto or torch")
    return ENGINE.build(values, device=device, dtype=dtype)


def check_service_settings(values: Values) -> None:
    """Build every config `up`'s processes will build from ``values``, so a bad setting stops
    `up` (or `demo`) as one line before the broker and the workers start, instead of a
    worker dying of it."""
    topics_config(values)
    classifier_config(values)
    engine_config(values)


def worker_config(values: Values, topics: TopicNames) -> WorkerConfig:
    """The worker's Kafka side: its bins, topic names and flow control."""
    return WORKER.build(values, topic_prefix=topics.prefix)
