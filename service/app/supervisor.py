"""``binbaton up``: the whole service on one machine, started and stopped in order.

Start: embedded broker (unless bootstrap servers are given) → topics → classifier (in
this process) → worker processes (``binbaton worker --bins …``; one per CUDA device, or
``--workers N`` on the CPU; each serves every bin, sharing each bin's partitions). Once
every topic exists and every worker printed its ready line, print exactly one line
``ready bootstrap=HOST:PORT``.
A worker that dies is restarted. Stop (``stop``, the first SIGINT/SIGTERM): workers drain
(SIGTERM), the classifier finishes its batch, then the broker stops, in the mirror order of
the start; ``abort`` (a second signal) passes a second SIGTERM on, so workers skip the drain.

Supervision both ways: the broker and the workers die with `up` however it dies (the
parent-death signal armed in each child before it execs, and the workers' ``--parent-pid``
watchdog); `up` refuses to start an embedded broker where one already answers or the port
is taken; and when its embedded broker dies (memory-only: every topic is gone) `up` kills
the workers and exits non-zero, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from binbaton.schemas.settings import positive_int, setting
from binbaton.service.app.configs import (
    classifier_config,
    kafka_config,
    resolve_device,
    topics_config,
    uses_embedded_broker,
)
from binbaton.service.app.flags import Values, merge, to_argv
from binbaton.service.app.sections import METRICS, TRACING, WORKER_PROCESS
from binbaton.service.classifier.service import run_classifier
from binbaton.service.kafka.broker import (
    DEFAULT_HOST,
    BrokerError,
    EmbeddedBroker,
    answers_metadata,
    die_with_parent,
)
from binbaton.service.kafka.topics import TopicsConfig, create_service_topics

log = logging.getLogger("binbaton.up")

WORKER_READY_PREFIX = "worker ready"
WORKER_START_TIMEOUT_S = 900.0  # loading a large model on a cold GPU takes a while
RESTART_DELAY_S = 1.0
CLI_MODULE = "binbaton.service.app.cli"  # `python -m` this: the `binbaton` command
SET_PER_WORKER = ("bins", "bootstrap-servers", "broker-port", "parent-pid")  # worker_argv's
CLASSIFIER_STOP_TIMEOUT_S = 5.0  # after the broker died: nothing left to finish


@dataclass(frozen=True)
class SupervisorConfig:
    workers: int | None = field(default=None, metadata=setting(
        "`up`: worker processes (default: one per CUDA device, else 1)", parse=positive_int))


def split_bins(num_bins: int, num_workers: int) -> list[tuple[int, ...]]:
    """Bins per worker: every worker serves every bin. Each bin's consumer group spreads
    that bin's partitions over the workers, so a burst in one bin keeps every worker busy
    (and when a worker dies, its partitions go to the others)."""
    return [tuple(range(num_bins))] * num_workers


def spread_topics(topics: TopicsConfig, num_workers: int, fresh: bool) -> TopicsConfig:
    """At least one partition of every bin per worker, on a ``fresh`` (embedded) broker;
    topics that already exist keep theirs (then at most that many workers share a bin)."""
    if not fresh or topics.bin_partitions >= num_workers:
        if topics.bin_partitions < num_workers:
            log.warning("bin topics have %d partitions for %d workers: some workers will "
                        "idle in each bin (raise --partitions)", topics.bin_partitions,
                        num_workers)
        return topics
    return dataclasses.replace(topics, bin_partitions=num_workers)


def worker_devices(device: str, workers: int | None) -> list[str]:
    """One device string per worker: every CUDA device, or ``workers`` CPU workers."""
    device = resolve_device(device)
    if device == "cuda":
        import torch

        count = torch.cuda.device_count()
        return [f"cuda:{i % count}" for i in range(workers or count)]
    return [device] * (workers or 1)


@dataclass
class WorkerProcess:
    """One ``binbaton worker`` child and what it needs to be restarted."""

    argv: list[str]
    env: dict[str, str]
    name: str
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    restarts: int = 0
    _pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.ready.clear()
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,  # a terminal's Ctrl-C reaches `up` only; `up` stops us
            preexec_fn=die_with_parent(),  # and our death, however it comes, kills it
        )
        self._pump = asyncio.create_task(self._read_stdout(), name=f"{self.name}-stdout")

    async def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for line in self.process.stdout:
            text = line.decode(errors="replace").rstrip()
            if text.startswith(WORKER_READY_PREFIX):
                self.ready.set()
            print(f"[{self.name}] {text}", file=sys.stderr, flush=True)

    async def stop(self, timeout: float, abort: asyncio.Event) -> None:
        """SIGTERM (the worker drains); on ``abort`` a second SIGTERM (it skips the drain);
        SIGKILL after ``timeout``."""
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            self._signal(signal.SIGTERM)
            exited = asyncio.ensure_future(process.wait())
            aborted = asyncio.ensure_future(abort.wait())
            await asyncio.wait([exited, aborted], timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            if aborted.done() and not exited.done():
                self._signal(signal.SIGTERM)
                await asyncio.wait([exited], timeout=timeout)
            aborted.cancel()
            if not exited.done():
                log.warning("%s did not stop within %.0fs: killing it", self.name, timeout)
                self._signal(signal.SIGKILL)
            await exited
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._pump, 5)

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)


def worker_metrics_port(classifier_port: int | None, index: int) -> int:
    """Worker ``index``'s metrics port under ``up``: the classifier's port + 1 + index, or
    0 (off) when the classifier's is off; never the same port for two processes."""
    return classifier_port + 1 + index if classifier_port else 0


def worker_argv(values: Mapping[str, Any], bootstrap: str, bins: Sequence[int], device: str,
                index: int) -> list[str]:
    """``binbaton worker`` with every worker flag `up` resolved, for worker ``index``."""
    # The metrics port is always given, so a $BINBATON_METRICS_PORT meant for `up` is not
    # reused by every worker.
    passed = Values(values).with_(
        device=device, metrics_port=worker_metrics_port(values.get("metrics_port"), index))
    if values.get("worker_id"):
        passed = passed.with_(worker_id=f"{values['worker_id']}-{index}")
    flags = [f for f in merge(WORKER_PROCESS) if f.name not in SET_PER_WORKER]
    return [sys.executable, "-m", CLI_MODULE, "worker",
            "--bootstrap-servers", bootstrap, "--bins", ",".join(map(str, bins)),
            "--parent-pid", str(os.getpid()), *to_argv(passed, flags)]


def worker_env(num_workers: int, device: str) -> dict[str, str]:
    env = dict(os.environ)
    if device == "cpu" and "OMP_NUM_THREADS" not in env:
        # Workers share the cores instead of each spawning one thread per core.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_workers))
    # Several workers' model-loading progress bars (GGUF de-quantizing) would interleave
    # on up's stderr; the `kv cache` and `worker ready` lines say what matters.
    env.setdefault("TQDM_DISABLE", "1")
    return env


async def up(
    values: Values,
    stop: asyncio.Event,
    abort: asyncio.Event | None = None,
    out: TextIO = sys.stdout,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Run the service until ``stop`` is set. Returns the exit code.

    ``on_ready(bootstrap)`` is called right after the ready line is printed."""
    abort = abort or asyncio.Event()
    topics = topics_config(values)
    classifier_config(values)  # a bad setting fails before anything starts
    devices = worker_devices(values["device"], values["workers"])
    broker: EmbeddedBroker | None = None
    state_dir: str | None = None
    if uses_embedded_broker(values):
        broker = EmbeddedBroker(port=values["broker_port"], die_with_parent=True)
        problem = broker_port_problem(broker.host, broker.port)
        if problem is None:
            try:
                broker.start()  # from the loop's thread: the parent-death signal follows it
            except BrokerError as exc:
                problem = str(exc)
        if problem is not None:
            print(f"binbaton up: {problem}", file=sys.stderr, flush=True)
            return 1
        bootstrap = broker.bootstrap_servers
        if values.get("state_dir") is None:  # the broker's offsets die with it: so do these
            state_dir = tempfile.mkdtemp(prefix="binbaton-up-")
            values = values.with_(state_dir=state_dir)
    else:
        bootstrap = values["bootstrap_servers"]
    topics = spread_topics(topics, len(devices), fresh=broker is not None)
    classifier = classifier_config(values)  # with the state directory
    kafka = kafka_config(values.with_(bootstrap_servers=bootstrap),
                         client_id="binbaton-classifier")
    workers = [
        WorkerProcess(argv=worker_argv(values, bootstrap, bins, device, index),
                      env=worker_env(len(devices), device), name=f"worker-{index}")
        for index, (bins, device) in enumerate(
            zip(split_bins(topics.num_bins, len(devices)), devices, strict=True))
    ]
    classifier_stop = asyncio.Event()
    classifier_task: asyncio.Task[Any] | None = None
    try:
        await create_service_topics(bootstrap, topics)
        classifier_started = asyncio.Event()
        classifier_task = asyncio.create_task(
            run_classifier(kafka, topics, classifier, classifier_stop, classifier_started,
                           TRACING.build(values), METRICS.build(values)))
        for worker in workers:
            await worker.start()
        if not await _wait_ready(workers, classifier_task, classifier_started, stop, broker):
            return 0 if stop.is_set() else 1
        print(f"ready bootstrap={bootstrap}", file=out, flush=True)
        if on_ready is not None:
            on_ready(bootstrap)
        return await _supervise(workers, classifier_task, stop, broker)
    finally:
        broker_gone = broker is not None and not broker.is_running()
        if broker_gone:  # nothing to drain into, nothing to commit to
            for worker in workers:
                worker.kill()
        drain = values["drain_timeout"]
        await asyncio.gather(*(w.stop(drain + 10, abort) for w in workers))
        classifier_stop.set()
        if classifier_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(classifier_task,
                                       CLASSIFIER_STOP_TIMEOUT_S if broker_gone else None)
        if broker is not None:
            await asyncio.to_thread(broker.stop)
        if state_dir is not None:
            shutil.rmtree(state_dir, ignore_errors=True)


def broker_port_problem(host: str, port: int) -> str | None:
    """Why an embedded broker cannot start on host:port, in one line; None if it can."""
    if answers_metadata(host, port):
        return (f"a Kafka broker already answers on {host}:{port} (another `binbaton up`?): "
                f"stop it, or use it with --bootstrap-servers {host}:{port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host or DEFAULT_HOST, port))
        except OSError as exc:
            return (f"port {port} on {host} is taken ({exc.strerror}): stop what listens "
                    "there, or pick another with --broker-port")
    return None


def _broker_died(broker: EmbeddedBroker | None) -> bool:
    if broker is None or broker.is_running():
        return False
    message = (f"the embedded broker exited (code {broker.returncode}); its topics and "
               "offsets were in memory and are gone: stopping")
    log.error(message)
    print(f"binbaton up: {message}", file=sys.stderr, flush=True)
    return True


async def _wait_ready(
    workers: list[WorkerProcess],
    classifier: asyncio.Task[Any],
    classifier_started: asyncio.Event,
    stop: asyncio.Event,
    broker: EmbeddedBroker | None,
) -> bool:
    """True once the classifier is connected and every worker is ready."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WORKER_START_TIMEOUT_S
    while not stop.is_set():
        if _broker_died(broker):
            return False
        if classifier.done():
            classifier.result()  # raises the classifier's error
            return False
        for worker in workers:
            assert worker.process is not None
            if worker.process.returncode is not None and not worker.ready.is_set():
                log.error("%s exited with code %s before it was ready", worker.name,
                          worker.process.returncode)
                print(f"binbaton up: {worker.name} exited with code "
                      f"{worker.process.returncode} before it was ready", file=sys.stderr)
                return False
        if classifier_started.is_set() and all(w.ready.is_set() for w in workers):
            return True
        if loop.time() > deadline:
            print("binbaton up: workers not ready in time", file=sys.stderr)
            return False
        await asyncio.sleep(0.1)
    return False


async def _supervise(
    workers: list[WorkerProcess], classifier: asyncio.Task[Any], stop: asyncio.Event,
    broker: EmbeddedBroker | None,
) -> int:
    """Until ``stop``: restart workers that exit; a failed classifier or a dead embedded
    broker ends the service."""
    while not stop.is_set():
        if _broker_died(broker):
            return 1
        if classifier.done():
            classifier.result()
            return 1
        for worker in workers:
            assert worker.process is not None
            if worker.process.returncode is not None and not stop.is_set():
                worker.restarts += 1
                log.warning("%s exited with code %s; restarting (%d)", worker.name,
                            worker.process.returncode, worker.restarts)
                print(f"binbaton up: {worker.name} exited with code "
                      f"{worker.process.returncode}; restarting", file=sys.stderr, flush=True)
                await asyncio.sleep(RESTART_DELAY_S)
                await worker.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    return 0
