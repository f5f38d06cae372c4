"""WorkerConfig: which bins a worker serves, its Kafka names and its flow-control limits.

No environment reading here: ``binbaton.service.config`` builds this from flags and
``BINBATON_*`` variables. Kafka client settings (bootstrap servers, session timeouts)
live in the service's ``KafkaConfig``.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field

_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]+$")


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class WorkerConfig:
    bins: tuple[int, ...]  # bin indices served; one consumer group per bin
    topic_prefix: str = "binbaton"
    worker_id: str = field(default_factory=default_worker_id)
    max_in_flight: int = 64  # messages taken from Kafka and not yet acknowledged as results
    drain_timeout_s: float = 30.0  # on SIGTERM/SIGINT: time to finish in-flight requests
    max_poll_records: int = 16  # records handed over by one poll
    poll_timeout_ms: int = 200  # how long one poll waits for records
    commit_interval_s: float = 1.0  # how often acknowledged offsets are committed

    def __post_init__(self) -> None:
        bins = tuple(self.bins)
        object.__setattr__(self, "bins", bins)
        if not bins:
            raise ValueError("a worker needs at least one bin")
        if any(not isinstance(b, int) or isinstance(b, bool) or b < 0 for b in bins):
            raise ValueError(f"bins must be non-negative integers, got {bins}")
        if len(set(bins)) != len(bins):
            raise ValueError(f"bins must not repeat, got {bins}")
        if not _TOPIC_PREFIX.match(self.topic_prefix):
            raise ValueError(
                f"topic_prefix must match {_TOPIC_PREFIX.pattern}, got {self.topic_prefix!r}"
            )
        if not self.worker_id:
            raise ValueError("worker_id must not be empty")
        _positive(self, "max_in_flight", "max_poll_records", "poll_timeout_ms")
        _positive(self, "commit_interval_s")
        if self.drain_timeout_s < 0:
            raise ValueError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")

    def bin_topic(self, bin: int) -> str:
        return f"{self.topic_prefix}.bin.{bin}"

    def group_id(self, bin: int) -> str:
        return f"{self.topic_prefix}.worker.bin-{bin}"

    @property
    def results_topic(self) -> str:
        return f"{self.topic_prefix}.results"

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic_prefix}.dlq"


def _positive(config: WorkerConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
