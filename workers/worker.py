"""The worker process: Kafka bins in, engine in the middle, results out.

One consumer group per bin (``<prefix>.worker.bin-<i>``), so one AIOKafkaConsumer per
served bin; they share one engine, one producer and one bound on in-flight messages.

Flow control and delivery (DESIGN.md, "Delivery semantics"):
- a message is *in flight* from the moment it is taken until its result is acknowledged
  by the broker; at most ``max_in_flight`` are. When full, every assigned partition is
  paused (and re-paused after a rebalance); records a poll hands over beyond the bound
  are given back with a seek.
- completions are out of order, so each consumer's OffsetTracker commits per partition
  up to the lowest offset whose result is not yet acknowledged (periodically, on revoke
  and at shutdown). A message whose result was not acknowledged is never committed: it
  is redelivered (at-least-once; clients de-duplicate by id).
- the engine steps in its own thread (AsyncEngine), so the event loop keeps heartbeating.

Shutdown (SIGTERM/SIGINT): stop taking messages, let in-flight requests finish within
``drain_timeout_s``, publish and commit them, leave the groups. A second signal skips
the rest of the drain.

Observability (optional ``Telemetry`` and ``Metrics``): each record gets a
``process binbaton.bin.<i>`` span (from the moment it was taken until its result is
acknowledged); its queue wait / prefill / kv insert / decode children are made after the
request finished, from the engine's timestamps, so tracing adds nothing to decoding; the
``send binbaton.results`` span ends on the broker's ack and its context travels in the
result's headers. Metrics: results by status, TTFT/TPOT/duration histograms, tokens and
predictor error once a result is acknowledged; per-bin queue depth on every take and
finish; consumer lag and batch occupancy every ``GAUGE_INTERVAL_S``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from binbaton.schemas.codec import (
    InvalidMessage,
    dead_letter,
    decode_binned,
    encode,
    error_result,
    now_ms,
    recover_id,
)
from binbaton.schemas.messages import BinnedRequest, DeadLetter, ErrorInfo, Result, Timings
from binbaton.service.telemetry.metrics import Metrics, update_consumer_lag
from binbaton.service.telemetry.tracing import (
    BIN,
    WORKER_SERVICE,
    GenerationTimeline,
    Telemetry,
    mark_error,
    seconds_to_ns,
)
from binbaton.workers.config import WorkerConfig
from binbaton.workers.engine.request import GenerationOutput, GenerationRequest
from binbaton.workers.messages import (
    Headers,
    build_result,
    to_generation_request,
    trace_headers,
)
from binbaton.workers.offsets import OffsetTracker
from opentelemetry.trace import Span

log = logging.getLogger(__name__)

STAGE = "worker"
PUBLISH_RETRY_S = 0.5
GAUGE_INTERVAL_S = 1.0  # consumer lag and batch occupancy refresh


class WorkerError(RuntimeError):
    """The worker cannot serve (e.g. its topics do not exist)."""


class KafkaSettings(Protocol):
    """What the worker needs of ``binbaton.service.config.KafkaConfig``."""

    bootstrap_servers: str

    def producer_kwargs(self, client_id: str | None = None) -> dict[str, Any]: ...

    def consumer_kwargs(
        self, group_id: str | None, client_id: str | None = None
    ) -> dict[str, Any]: ...


class EngineService(Protocol):
    """What the worker needs of ``binbaton.workers.engine.async_engine.AsyncEngine``."""

    async def start(self) -> None: ...

    def submit(self, request: GenerationRequest) -> asyncio.Future[GenerationOutput]: ...

    async def stop(self, timeout: float | None = None) -> None: ...


def ready_line(config: WorkerConfig) -> str:
    """The line printed on stdout once the model is loaded and every group is joined."""
    return f"worker ready id={config.worker_id} bins={','.join(map(str, config.bins))}"


class BinConsumer(ConsumerRebalanceListener):
    """The consumer of one bin's group, its offset tracker, and its rebalance callbacks."""

    def __init__(self, worker: Worker, bin: int, consumer: AIOKafkaConsumer) -> None:
        self.worker = worker
        self.bin = bin
        self.consumer = consumer
        self.tracker = OffsetTracker()
        self.joined = asyncio.Event()
        self.pauses = 0  # times this consumer paused its partitions because the worker was full
        self.repauses = 0  # ... of which right after a rebalance assigned partitions
        self._commit_lock = asyncio.Lock()
        self._last_commit = time.monotonic()
        self._gauges_updated = 0.0
        self.depth = 0  # records of this bin taken and not yet finished (queue depth)

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Commit what is acknowledged, then forget: the new owner starts from there.
        await self.commit(revoked)
        self.tracker.reset(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        # A rebalance forgets pauses: re-pause when the worker is still full.
        if self.worker.is_full() and assigned:
            self.consumer.pause(*assigned)
            self.pauses += 1
            self.repauses += 1
        self.joined.set()
        log.info("bin %d: assigned %s", self.bin, sorted(assigned))

    def pause_all(self) -> None:
        unpaused = self.consumer.assignment() - self.consumer.paused()
        if unpaused:
            self.consumer.pause(*unpaused)
            self.pauses += 1

    def resume_all(self) -> None:
        paused = self.consumer.paused()
        if paused:
            self.consumer.resume(*paused)

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit, per partition, up to the lowest offset not yet acknowledged."""
        async with self._commit_lock:
            self._last_commit = time.monotonic()
            offsets = self.tracker.committable(partitions)
            if not offsets:
                return
            try:
                await self.consumer.commit(offsets)
            except KafkaError as exc:  # rebalanced away, broker gone: redelivered later
                log.warning("bin %d: commit of %s failed: %r", self.bin, offsets, exc)
                return
            self.tracker.committed(offsets)
            log.debug("bin %d: committed %s", self.bin, offsets)

    async def maybe_commit(self, interval_s: float) -> None:
        if time.monotonic() - self._last_commit >= interval_s:
            await self.commit()

    async def maybe_update_lag(self, metrics: Metrics | None) -> bool:
        """Refresh this consumer's lag gauges every GAUGE_INTERVAL_S; True if it did."""
        if metrics is None or time.monotonic() - self._gauges_updated < GAUGE_INTERVAL_S:
            return False
        self._gauges_updated = time.monotonic()
        with contextlib.suppress(KafkaError, AssertionError):  # rebalancing: next time
            await update_consumer_lag(metrics, self.consumer)
        return True


class Worker:
    """Serves the configured bins until ``stop`` is set; see the module docstring."""

    def __init__(
        self,
        config: WorkerConfig,
        kafka: KafkaSettings,
        engine: EngineService,
        on_ready: Callable[[], None] | None = None,
        telemetry: Telemetry | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.kafka = kafka
        self.engine = engine
        self.on_ready = on_ready
        self.telemetry = telemetry or Telemetry.disabled(WORKER_SERVICE)
        self.metrics = metrics
        self.in_flight = 0
        self.served = 0  # results acknowledged (ok or error)
        self.failed = False  # the engine broke: exit non-zero, leave messages uncommitted
        self._capacity_freed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_id: dict[str, asyncio.Future[GenerationOutput]] = {}
        self._producer: AIOKafkaProducer | None = None
        self._consumers: list[BinConsumer] = []
        self._stop = asyncio.Event()
        self._abort = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, abort: asyncio.Event | None = None) -> int:
        """Start, serve until ``stop`` is set, drain, stop. Returns the exit code."""
        self._stop = stop
        self._abort = abort or asyncio.Event()
        try:
            await self.start()
            await self._serve()
        except (KafkaError, WorkerError) as exc:  # e.g. no broker, missing topics
            log.error("worker failed: %s", exc)
            self.failed = True
        finally:
            await self.stop()
        return 1 if self.failed else 0

    async def start(self) -> None:
        """Engine thread, producer, one consumer per bin; returns once every group joined."""
        await self.engine.start()
        client_id = f"binbaton-worker-{self.config.worker_id}"
        self._producer = AIOKafkaProducer(**self.kafka.producer_kwargs(client_id))
        await self._producer.start()
        for bin in self.config.bins:
            kwargs = self.kafka.consumer_kwargs(self.config.group_id(bin), client_id)
            kwargs["enable_auto_commit"] = False
            kwargs["max_poll_records"] = self.config.max_poll_records
            consumer = AIOKafkaConsumer(**kwargs)
            self._consumers.append(BinConsumer(self, bin, consumer))
            await consumer.start()  # not subscribed yet: returns without joining
        await self._check_topics(self._consumers[0].consumer)
        # Subscribing starts the group join in the background; all groups join side by side.
        for bin_consumer in self._consumers:
            topic = self.config.bin_topic(bin_consumer.bin)
            bin_consumer.consumer.subscribe([topic], listener=bin_consumer)
        if await self._wait_joined():
            print(ready_line(self.config), flush=True)
            if self.on_ready is not None:
                self.on_ready()

    async def _check_topics(self, consumer: AIOKafkaConsumer) -> None:
        config = self.config
        needed = [*map(config.bin_topic, config.bins), config.results_topic, config.dlq_topic]
        missing = sorted(set(needed) - await consumer.topics())
        if missing:
            raise WorkerError(
                f"topics {', '.join(missing)} do not exist on {self.kafka.bootstrap_servers}; "
                "create them first (`binbaton topics`)"
            )

    async def _wait_joined(self) -> bool:
        """True once every bin's group assigned us (maybe no partitions); False if stopped."""
        joined = asyncio.ensure_future(asyncio.gather(*(c.joined.wait() for c in self._consumers)))
        stopped = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait([joined, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        joined.cancel()
        return all(c.joined.is_set() for c in self._consumers)

    async def stop(self) -> None:
        """Mirror of start: consumers (leave the groups), producer, engine."""
        for bin_consumer in reversed(self._consumers):
            with contextlib.suppress(Exception):
                await bin_consumer.consumer.stop()
        self._consumers.clear()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None
        await self.engine.stop(timeout=1.0)

    async def _serve(self) -> None:
        loops = [asyncio.create_task(self._fetch_loop(c)) for c in self._consumers]
        try:
            await asyncio.gather(*loops)
        except Exception:
            log.exception("worker fetch loop failed")
            self.failed = True
            self._stop.set()
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
        await self._drain()

    async def _drain(self) -> None:
        """Let in-flight requests finish within the drain timeout, then commit them."""
        if self._tasks and not self.failed:
            log.info("draining %d in-flight requests (%.1fs)", len(self._tasks),
                     self.config.drain_timeout_s)
            pending = asyncio.ensure_future(asyncio.wait(set(self._tasks)))
            aborted = asyncio.ensure_future(self._abort.wait())
            await asyncio.wait([pending, aborted], timeout=self.config.drain_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
            pending.cancel()
            aborted.cancel()
        for bin_consumer in self._consumers:
            await bin_consumer.commit()
        if self._tasks:
            log.warning("%d requests not finished: left uncommitted (redelivered)",
                        len(self._tasks))
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- taking messages -----------------------------------------------------------------

    def is_full(self) -> bool:
        return self.in_flight >= self.config.max_in_flight

    async def _fetch_loop(self, bin_consumer: BinConsumer) -> None:
        config = self.config
        while not self._stop.is_set():
            free = config.max_in_flight - self.in_flight
            if free <= 0:
                bin_consumer.pause_all()
                # Still poll (returns nothing while paused) so the group sees us alive.
                self._take(bin_consumer, await bin_consumer.consumer.getmany(timeout_ms=0))
                await self._wait_for_capacity(config.poll_timeout_ms / 1000)
            else:
                bin_consumer.resume_all()
                batch = await bin_consumer.consumer.getmany(
                    timeout_ms=config.poll_timeout_ms,
                    max_records=min(free, config.max_poll_records),
                )
                self._take(bin_consumer, batch)
            await bin_consumer.maybe_commit(config.commit_interval_s)
            if await bin_consumer.maybe_update_lag(self.metrics):
                self._update_batch_gauge()

    async def _wait_for_capacity(self, timeout: float) -> None:
        self._capacity_freed.clear()
        if not self.is_full():  # freed while we polled
            return
        freed = asyncio.ensure_future(self._capacity_freed.wait())
        stopped = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait([freed, stopped], timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        freed.cancel()
        stopped.cancel()

    def _take(
        self, bin_consumer: BinConsumer, batch: dict[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        assigned = bin_consumer.consumer.assignment()
        received = time.time()  # queue wait starts (the process span too)
        for tp, records in batch.items():
            if tp not in assigned:  # revoked while the poll returned: the new owner reads it
                continue
            for record in records:
                if self.is_full() or self._stop.is_set():
                    # Another bin's poll took the room: hand the rest back.
                    bin_consumer.consumer.seek(tp, record.offset)
                    break
                bin_consumer.tracker.track(tp, record.offset)
                self.in_flight += 1
                self._set_depth(bin_consumer, +1)
                task = asyncio.create_task(self._handle(bin_consumer, tp, record, received))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    # -- serving one message -------------------------------------------------------------

    async def _handle(
        self, bin_consumer: BinConsumer, tp: TopicPartition, record: ConsumerRecord,
        received: float,
    ) -> None:
        acknowledged = False
        span = self.telemetry.start_process(
            record, self.config.group_id(bin_consumer.bin), start_ns=seconds_to_ns(received),
            attributes={BIN: bin_consumer.bin})
        try:
            try:
                acknowledged = await self._serve_record(bin_consumer, record, span, received)
            except Exception as exc:  # a bug: answer the request instead of stalling commits
                log.exception("serving %s[%d]@%d failed", record.topic, record.partition,
                              record.offset)
                mark_error(span, exc)
                error = ErrorInfo("internal", f"worker error: {exc!r}")
                acknowledged = await self._reject(record, bin_consumer.bin, error,
                                                  recover_id(record.value or b""), span)
        except BaseException as exc:  # cancelled by the drain: redelivered later
            mark_error(span, exc)
            raise
        finally:
            span.end()
            if acknowledged:
                bin_consumer.tracker.done(tp, record.offset)
                self.served += 1
            self.in_flight -= 1
            self._set_depth(bin_consumer, -1)
            self._capacity_freed.set()

    async def _serve_record(self, bin_consumer: BinConsumer, record: ConsumerRecord,
                            span: Span, received: float) -> bool:
        """Serve one message; True once everything it caused is acknowledged."""
        try:
            binned = decode_binned(record.value or b"")
        except InvalidMessage as exc:
            error = ErrorInfo(exc.code, str(exc))
            return await self._reject(record, bin_consumer.bin, error, exc.request_id, span)
        self.telemetry.annotate(span, binned)
        try:
            request = to_generation_request(binned)
        except ValueError as exc:
            error = ErrorInfo("invalid_request", f"invalid binned request: {exc}")
            return await self._reject(record, bin_consumer.bin, error, binned.request.id, span,
                                      binned)
        try:
            output = await asyncio.shield(self._submit(request))
        except Exception as exc:
            # The engine itself broke: leave the message uncommitted for a healthy worker.
            log.exception("engine failed on request %s; stopping", request.id)
            mark_error(span, exc)
            self.failed = True
            self._stop.set()
            return False
        if self.telemetry.enabled:  # the stages, from the engine's timestamps, afterwards
            timeline = GenerationTimeline.from_output(output, received)
            self.telemetry.record_generation(span, timeline, request.id)
        result = build_result(binned, output, self.config.worker_id)
        self.telemetry.annotate(span, result)
        sends = [self._publish(self.config.results_topic, result, request.id, record, span)]
        if output.error is not None:
            mark_error(span, output.error.code)
            letter = dead_letter(record.value, result.error, record.topic, record.partition,
                                 record.offset, request.id, STAGE)
            sends.append(self._publish(self.config.dlq_topic, letter, request.id, record, span))
        await asyncio.gather(*sends)
        if self.metrics is not None:
            self.metrics.observe_result(result, STAGE)
        return True

    def _set_depth(self, bin_consumer: BinConsumer, change: int) -> None:
        bin_consumer.depth += change
        if self.metrics is not None:
            self.metrics.set_queue_depth(bin_consumer.bin, bin_consumer.depth)
            if change < 0:
                self._update_batch_gauge()

    def _update_batch_gauge(self) -> None:
        """Running sequences over ``max_batch`` of the engine behind an AsyncEngine."""
        engine = getattr(self.engine, "engine", None)
        if self.metrics is None or engine is None:
            return
        self.metrics.set_batch(engine.last_step.running, engine.config.max_batch)

    def _submit(self, request: GenerationRequest) -> asyncio.Future[GenerationOutput]:
        # A redelivered id still in the engine (revoke, then re-assign) shares its future.
        future = self._by_id.get(request.id)
        if future is None:
            future = self.engine.submit(request)
            self._by_id[request.id] = future
            future.add_done_callback(lambda _: self._by_id.pop(request.id, None))
        return future

    async def _reject(
        self,
        record: ConsumerRecord,
        bin: int,
        error: ErrorInfo,
        request_id: str | None,
        span: Span,
        binned: BinnedRequest | None = None,
    ) -> bool:
        """A message the worker cannot serve: a DeadLetter, and an error Result if the id is
        known."""
        log.warning("dead-lettering %s[%d]@%d: %s", record.topic, record.partition,
                    record.offset, error.message)
        mark_error(span, error.code)
        letter = dead_letter(record.value, error, record.topic, record.partition, record.offset,
                             request_id, STAGE)
        sends = [self._publish(self.config.dlq_topic, letter, request_id, record, span)]
        result: Result | None = None
        if request_id is not None:
            timings = Timings(finished=now_ms())
            if binned is not None:
                timings = Timings(received=binned.received, classified=binned.classified,
                                  finished=now_ms())
            metadata = dict(binned.request.metadata) if binned is not None else None
            result = error_result(request_id, error, timings=timings, metadata=metadata,
                                  bin=bin, worker=self.config.worker_id)
            self.telemetry.annotate(span, result)
            sends.append(self._publish(self.config.results_topic, result, request_id, record,
                                       span))
        await asyncio.gather(*sends)
        if self.metrics is not None:
            if result is not None:
                self.metrics.observe_result(result, STAGE)
            else:
                self.metrics.observe_rejected(STAGE, error.code)
        return True

    async def _publish(self, topic: str, message: Any, key: str | None,
                       record: ConsumerRecord, parent: Span) -> None:
        """Send and wait for the broker's acknowledgement, retrying until it comes.

        Traced: under a ``send <topic>`` span (child of ``parent``, ended on the ack) whose
        context goes in the headers. Untraced: the record's trace headers pass on unchanged.
        """
        assert self._producer is not None
        value = encode(message)
        key_bytes = key.encode() if key is not None else None
        described = None if isinstance(message, DeadLetter) else message  # no request fields
        send = self.telemetry.start_send(topic, key, message=described, parent=parent)
        headers: Headers = (send.headers if self.telemetry.enabled
                            else trace_headers(record.headers))
        try:
            while True:
                try:
                    metadata = await self._producer.send_and_wait(
                        topic, value=value, key=key_bytes, headers=headers or None)
                    break
                except KafkaError as exc:
                    log.warning("publish to %s failed (%r); retrying", topic, exc)
                    await asyncio.sleep(PUBLISH_RETRY_S)
        except BaseException as exc:
            send.end(exc)
            raise
        if metadata is not None:
            send.acknowledged(metadata)
        send.end()


# -- entry points ----------------------------------------------------------------------


async def serve(
    worker_config: WorkerConfig,
    engine: EngineService,
    kafka: KafkaSettings,
    stop: asyncio.Event,
    abort: asyncio.Event | None = None,
    on_ready: Callable[[], None] | None = None,
    telemetry: Telemetry | None = None,
    metrics: Metrics | None = None,
) -> int:
    """The async core: run a Worker until ``stop`` is set. Returns the exit code.

    ``telemetry``/``metrics`` are the caller's (it shuts them down); None: off."""
    worker = Worker(worker_config, kafka, engine, on_ready, telemetry, metrics)
    return await worker.run(stop, abort)


def run_worker(
    worker_config: WorkerConfig,
    engine_config: Any,
    kafka: KafkaSettings,
    on_ready: Callable[[], None] | None = None,
    telemetry: Telemetry | None = None,
    metrics: Metrics | None = None,
) -> int:
    """Blocking entry point (``binbaton worker``): load the model, serve until a signal.

    ``engine_config`` is a ``binbaton.workers.engine.config.EngineConfig``. SIGTERM or
    SIGINT drains; a second one skips the rest of the drain. Returns the exit code.
    ``telemetry``/``metrics``: the caller's, shut down by the caller; None: off.
    """
    from binbaton.workers.engine.async_engine import AsyncEngine
    from binbaton.workers.engine.engine import Engine

    try:
        engine = AsyncEngine(Engine(engine_config))  # load the model before joining any group
    except (ValueError, OSError) as exc:  # unsupported architecture, missing files, …
        log.error("worker cannot load model %s: %s", engine_config.model, exc)
        return 1
    return asyncio.run(_run_until_signal(worker_config, engine, kafka, on_ready, telemetry,
                                         metrics))


async def _run_until_signal(
    worker_config: WorkerConfig,
    engine: EngineService,
    kafka: KafkaSettings,
    on_ready: Callable[[], None] | None,
    telemetry: Telemetry | None,
    metrics: Metrics | None,
) -> int:
    stop, abort = asyncio.Event(), asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: skipping the drain", signal.Signals(signum).name)
            abort.set()
        else:
            log.info("%s: stopping", signal.Signals(signum).name)
            stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await serve(worker_config, engine, kafka, stop, abort, on_ready, telemetry,
                           metrics)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m binbaton.workers.worker``: a worker with explicit settings (tests, debugging).

    The product's entry point is ``binbaton worker`` (service/cli.py), which reads the
    ``BINBATON_*`` environment too.
    """
    from binbaton.service.kafka.config import KafkaConfig
    from binbaton.workers.engine.config import EngineConfig

    parser = argparse.ArgumentParser(prog="python -m binbaton.workers.worker")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic-prefix", default="binbaton")
    parser.add_argument("--bins", required=True, help="comma-separated bin indices, e.g. 0,1")
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--policy", default="multibin-insert")
    parser.add_argument("--max-batch", type=int, default=None)
    parser.add_argument("--worker-id", default=None)
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--commit-interval", type=float, default=1.0)
    parser.add_argument("--session-timeout-ms", type=int, default=10_000)
    parser.add_argument("--heartbeat-interval-ms", type=int, default=2_000)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    worker_kwargs: dict[str, Any] = {}
    if args.worker_id:
        worker_kwargs["worker_id"] = args.worker_id
    worker_config = WorkerConfig(
        bins=tuple(int(b) for b in args.bins.split(",") if b.strip()),
        topic_prefix=args.topic_prefix,
        max_in_flight=args.max_in_flight,
        drain_timeout_s=args.drain_timeout,
        commit_interval_s=args.commit_interval,
        **worker_kwargs,
    )
    kafka = KafkaConfig(
        bootstrap_servers=args.bootstrap_servers,
        client_id="binbaton-worker",
        session_timeout_ms=args.session_timeout_ms,
        heartbeat_interval_ms=args.heartbeat_interval_ms,
    )
    engine_kwargs: dict[str, Any] = {}
    if args.max_batch is not None:
        engine_kwargs["max_batch"] = args.max_batch
    engine_config = EngineConfig(model=args.model, device=args.device, dtype=args.dtype,
                                 policy=args.policy, **engine_kwargs)
    return run_worker(worker_config, engine_config, kafka)


if __name__ == "__main__":
    sys.exit(main())
