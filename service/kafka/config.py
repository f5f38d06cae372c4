"""KafkaConfig: where Kafka is, and client settings that work on the embedded broker.

The embedded broker has no idempotent producer and no transactions, so producers never ask
for them (``acks=all`` is fine); consumers commit by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from binbaton.schemas.settings import ConfigError, UserError, non_empty, positive_int, setting
from binbaton.service.kafka.broker import DEFAULT_HOST, DEFAULT_PORT, answers_kafka

REACH_TIMEOUT_S = 3.0  # per bootstrap server: how long "nothing answers" may take
FETCH_MAX_BYTES = 52_428_800  # aiokafka's default, raised when a message may be larger
PARTITION_FETCH_BYTES = 1_048_576


def embedded_bootstrap(port: int = DEFAULT_PORT) -> str:
    """Bootstrap servers of the embedded broker on this machine."""
    return f"{DEFAULT_HOST}:{port}"


class BrokerUnreachable(UserError):
    """No Kafka broker answers at the bootstrap servers."""


def check_reachable(bootstrap_servers: str, embedded: bool,
                    timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Returns once one bootstrap server answers as a Kafka broker; else raises
    BrokerUnreachable, naming the address and the fix (within ``timeout_s`` per server,
    instead of a client's retries and a traceback)."""
    servers = [s.strip() for s in bootstrap_servers.split(",") if s.strip()]
    for server in servers:
        host, _, port = server.rpartition(":")
        if port.isdigit() and answers_kafka(host.strip("[]"), int(port), timeout_s):
            return
    if embedded:
        raise BrokerUnreachable(
            f"no Kafka broker answers at {bootstrap_servers}, the embedded broker's address (no "
            "--bootstrap-servers given): start `binbaton up` (or `binbaton broker`) first, "
            "or give --bootstrap-servers HOST:PORT")
    raise BrokerUnreachable(
        f"no Kafka broker answers at --bootstrap-servers {bootstrap_servers}: start Kafka "
        "there, or correct --bootstrap-servers")


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = field(default=embedded_bootstrap(), metadata=setting(
        "Kafka bootstrap servers HOST:PORT[,…] (unset: the embedded broker on "
        "127.0.0.1:<broker-port>, which `up` and `demo` start)", parse=non_empty))
    client_id: str = "binbaton"
    acks: str = "all"
    linger_ms: int = 5
    request_timeout_ms: int = 30_000
    max_request_size: int = 8 << 20  # producer: largest message it will send
    session_timeout_ms: int = field(default=10_000, metadata=setting(
        "consumer group session (ms): a member silent this long loses its partitions",
        parse=positive_int))
    heartbeat_interval_ms: int = field(default=2_000, metadata=setting(
        "consumer heartbeat interval (ms), below the session timeout", parse=positive_int))
    max_poll_interval_ms: int = 300_000
    auto_offset_reset: str = "earliest"

    def __post_init__(self) -> None:
        servers = [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]
        if not servers or any(":" not in s for s in servers):
            raise ConfigError(
                f"bootstrap_servers must be HOST:PORT[,HOST:PORT…], got {self.bootstrap_servers!r}"
            )
        if self.acks not in ("all", "1", "0"):
            raise ConfigError(f"acks must be all, 1 or 0, got {self.acks!r}")
        if self.auto_offset_reset not in ("earliest", "latest"):
            raise ConfigError(f"auto_offset_reset must be earliest|latest, "
                              f"got {self.auto_offset_reset!r}")
        if self.linger_ms < 0:
            raise ConfigError("linger_ms must be >= 0")
        for name in ("request_timeout_ms", "max_request_size", "session_timeout_ms",
                     "heartbeat_interval_ms", "max_poll_interval_ms"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ConfigError("heartbeat_interval_ms must be below session_timeout_ms")

    def producer_kwargs(self, client_id: str | None = None) -> dict[str, Any]:
        """AIOKafkaProducer arguments: acks=all, no idempotence, no transactions."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": client_id or self.client_id,
            "acks": "all" if self.acks == "all" else int(self.acks),
            "enable_idempotence": False,
            "linger_ms": self.linger_ms,
            "request_timeout_ms": self.request_timeout_ms,
            "max_request_size": self.max_request_size,
        }

    def consumer_kwargs(self, group_id: str | None, client_id: str | None = None) -> dict[str, Any]:
        """AIOKafkaConsumer arguments: manual commits, reading from the earliest offset."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": client_id or self.client_id,
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": self.auto_offset_reset,
            "request_timeout_ms": self.request_timeout_ms,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
            "fetch_max_bytes": max(FETCH_MAX_BYTES, self.max_request_size),
            "max_partition_fetch_bytes": max(PARTITION_FETCH_BYTES, self.max_request_size),
        }
