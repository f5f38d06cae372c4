"""WorkerConfig: which bins a worker serves, its Kafka names and its flow-control limits.

Its flags (``--bins``, ``--worker-id``, ``--max-in-flight``, ``--drain-timeout``,
``--commit-interval``) are declared on the fields; ``binbaton.service.app`` reads them.
Kafka client settings (bootstrap servers, session timeouts) are the KafkaConfig's.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from binbaton.schemas.settings import (
    ConfigError,
    int_list,
    non_empty,
    positive_float,
    positive_int,
    setting,
)
from binbaton.schemas.topics import DEFAULT_PREFIX, TopicNames, check_prefix
from binbaton.service.kafka.attempts import max_attempts_field, state_dir_field


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def bin_indices(text: str) -> tuple[int, ...]:
    """'0,2' -> (0, 2): the bins a worker serves."""
    bins = int_list(text)
    if not bins or min(bins) < 0:
        raise ValueError("must name bin indices >= 0, e.g. 0,1")
    return bins


@dataclass(frozen=True)
class WorkerConfig:
    bins: tuple[int, ...] = field(metadata=setting(
        "bin indices to serve, e.g. 0,1 (one consumer group per bin)", parse=bin_indices))
    topic_prefix: str = DEFAULT_PREFIX
    worker_id: str = field(default_factory=default_worker_id, metadata=setting(
        "name written into results (default: host:pid)", parse=non_empty))
    max_in_flight: int = field(default=64, metadata=setting(
        "requests taken from Kafka and not yet answered, at most (then the worker pauses its "
        "partitions)", parse=positive_int))
    drain_timeout_s: float = field(default=30.0, metadata=setting(
        "seconds to finish in-flight work on shutdown", flag="drain-timeout",
        parse=positive_float))
    max_poll_records: int = 16  # records handed over by one poll
    poll_timeout_ms: int = 200  # how long one poll waits for records
    commit_interval_s: float = field(default=1.0, metadata=setting(
        "seconds between commits of the offsets whose results were acknowledged",
        flag="commit-interval", parse=positive_float))

    state_dir: str | None = state_dir_field()
    max_attempts: int = max_attempts_field()

    def __post_init__(self) -> None:
        bins = tuple(self.bins)
        object.__setattr__(self, "bins", bins)
        if not bins:
            raise ConfigError("a worker needs at least one bin")
        if any(not isinstance(b, int) or isinstance(b, bool) or b < 0 for b in bins):
            raise ConfigError(f"bins must be non-negative integers, got {bins}")
        if len(set(bins)) != len(bins):
            raise ConfigError(f"bins must not repeat, got {bins}")
        if not self.worker_id:
            raise ConfigError("worker_id must not be empty")
        for name in ("max_in_flight", "max_poll_records", "poll_timeout_ms",
                     "commit_interval_s", "max_attempts"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.drain_timeout_s < 0:
            raise ConfigError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")
        check_prefix(self.topic_prefix)

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.topic_prefix)

    def bin_topic(self, bin: int) -> str:
        return self.topics.bin(bin)

    def group_id(self, bin: int) -> str:
        return self.topics.worker_group(bin)

    @property
    def results_topic(self) -> str:
        return self.topics.results

    @property
    def dlq_topic(self) -> str:
        return self.topics.dlq
