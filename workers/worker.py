"""The worker's serving core: take a bin message, submit it to the engine, publish the result.

One consumer group per bin (``<prefix>.worker.bin-<i>``), so one BinConsumer per served
bin; they share one engine, one producer and one bound on in-flight messages.

Flow control and delivery (README's "Messages", at-least-once):
- a message is *in flight* from the moment it is taken until its result is acknowledged
  by the broker; at most ``max_in_flight`` are. When full, every assigned partition is
  paused (and re-paused after a rebalance); records a poll hands over beyond the bound
  are given back with a seek.
- a message whose result was not acknowledged is never committed (BinConsumer): it is
  redelivered (clients de-duplicate by id).
- the engine steps in its own thread (AsyncEngine), so the event loop keeps heartbeating.

Shutdown: once ``stop`` is set, stop taking messages, let in-flight requests finish within
``drain_timeout_s``, publish and commit them, leave the groups; ``abort`` skips the rest of
the drain (``binbaton worker`` sets them on the first and second SIGTERM/SIGINT). What is
unfinished then is aborted in the engine and left uncommitted (redelivered).

Rebalances: on revoke, a message of a revoked partition that is not publishing yet is
dropped (no result, no commit); its engine request is aborted once the assignment shows
the partition went to another worker, and shared by the redelivered message when it came
back to us (``revoke``, ``assigned``).

Poison pills (``service/kafka/attempts.py``, ``workers/attempts.py``): an engine error on
one request is that request's ``internal`` error; a message in flight when a worker died
runs alone next time, and after ``max_attempts`` such deaths it is dead-lettered as
``poison``.

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

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from binbaton.schemas.codec import (
    InvalidMessage,
    dead_letter,
    decode_binned,
    encode,
    error_result,
    key_id,
    now_ms,
    recover_id,
)
from binbaton.schemas.errors import ErrorCode
from binbaton.schemas.messages import BinnedRequest, DeadLetter, ErrorInfo, Result, Timings
from binbaton.service.kafka.attempts import AttemptJournal, MessageKey, default_state_dir
from binbaton.service.kafka.config import KafkaConfig
from binbaton.service.telemetry.metrics import Metrics
from binbaton.service.telemetry.tracing import (
    BIN,
    WORKER_SERVICE,
    GenerationTimeline,
    Telemetry,
    mark_error,
    seconds_to_ns,
)
from binbaton.workers.attempts import EngineGate
from binbaton.workers.config import WorkerConfig
from binbaton.workers.consumer import BinConsumer
from binbaton.workers.engine.request import GenerationOutput, GenerationRequest
from binbaton.workers.messages import (
    Headers,
    build_result,
    same_request,
    to_generation_request,
    trace_headers,
)
from opentelemetry.trace import Span

log = logging.getLogger(__name__)

STAGE = "worker"
PUBLISH_RETRY_S = 0.5
REVOKE_PUBLISH_WAIT_S = 5.0  # a revoked partition's results being published may finish


@dataclass(eq=False)
class Flight:
    """One message taken and not yet finished: its task, and how far it got."""

    task: asyncio.Task[None]
    stage: str = "taken"  # "engine" while its request decodes, then "publishing"
    request_id: str | None = None  # its engine request, while in the engine
    counted: bool = False  # its attempt record was incremented (see workers/attempts.py)


class WorkerError(RuntimeError):
    """The worker cannot serve (e.g. its topics do not exist)."""


class EngineService(Protocol):
    """What the worker needs of ``binbaton.workers.engine.async_engine.AsyncEngine``."""

    async def start(self) -> None: ...

    def submit(self, request: GenerationRequest) -> asyncio.Future[GenerationOutput]: ...

    def abort(self, request_id: str) -> bool: ...

    async def stop(self, timeout: float | None = None) -> None: ...


def ready_line(config: WorkerConfig) -> str:
    """The line printed on stdout once the model is loaded and every group is joined."""
    return f"worker ready id={config.worker_id} bins={','.join(map(str, config.bins))}"


class Worker:
    """Serves the configured bins until ``stop`` is set; see the module docstring."""

    def __init__(
        self,
        config: WorkerConfig,
        kafka: KafkaConfig,
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
        self._flights: dict[MessageKey, Flight] = {}
        self._orphans: dict[TopicPartition, set[str]] = {}  # revoked: engine requests left
        self.aborted = 0  # requests aborted in flight (revoked partition, drain timeout)
        # id -> the request in the engine under that id, and its output
        self._by_id: dict[str, tuple[GenerationRequest, asyncio.Future[GenerationOutput]]] = {}
        self._producer: AIOKafkaProducer | None = None
        self._consumers: list[BinConsumer] = []
        self.journal = AttemptJournal(Path(config.state_dir) if config.state_dir
                                      else default_state_dir())
        self._gate = EngineGate()
        self._journal_writer = ThreadPoolExecutor(1, thread_name_prefix="binbaton-attempts")
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
        joined: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(*(c.joined.wait() for c in self._consumers)))
        stopped: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
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
        self._journal_writer.shutdown(wait=False)

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
        if self._flights:  # aborted before the commit, so nothing of theirs moves it
            log.warning("%d requests not finished: aborted, left uncommitted (redelivered)",
                        len(self._flights))
            await self._abort_flights(list(self._flights.values()))
        for bin_consumer in self._consumers:
            await bin_consumer.commit()
        if self._tasks:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def revoke(self, partitions: set[TopicPartition]) -> None:
        """Partitions were revoked: results being published may finish; every other
        message of theirs is dropped (its task cancelled: no result, no commit) while its
        engine request runs on until the assignment shows where the partition went
        (``assigned``): a message redelivered to us shares it, one that went elsewhere is
        aborted there. The new owner reads from the last commit, so nothing is lost."""
        flights = [flight for key, flight in self._flights.items()
                   if TopicPartition(key.topic, key.partition) in partitions]
        publishing = [flight.task for flight in flights if flight.stage == "publishing"]
        if publishing:
            await asyncio.wait(publishing, timeout=REVOKE_PUBLISH_WAIT_S)
        dropped = [(key, flight) for key, flight in self._flights.items()
                   if TopicPartition(key.topic, key.partition) in partitions]
        for key, flight in dropped:
            if flight.request_id is not None:
                tp = TopicPartition(key.topic, key.partition)
                self._orphans.setdefault(tp, set()).add(flight.request_id)
            flight.task.cancel()
        await asyncio.gather(*(flight.task for _, flight in dropped), return_exceptions=True)

    def assigned(self, bin: int, partitions: set[TopicPartition]) -> None:
        """Engine requests of the bin's revoked partitions that went to another worker
        are aborted (their cache is freed); those assigned back to us are left to the
        redelivered messages (``_submit`` shares a request by id)."""
        topic = self.config.bin_topic(bin)
        for tp in [tp for tp in self._orphans if tp.topic == topic]:
            ids = self._orphans.pop(tp)
            if tp in partitions:
                continue
            live = {f.request_id for f in self._flights.values() if f.request_id is not None}
            doomed = ids - live
            for request_id in doomed:
                self._by_id.pop(request_id, None)
                self.aborted += self.engine.abort(request_id)
            if doomed:
                log.info("%s moved to another worker: aborted %d of its requests", tp,
                         len(doomed))

    async def _abort_flights(self, flights: list[Flight]) -> None:
        """Abort in the engine (unless a flight not aborted shares the request), cancel,
        wait until each task has ended."""
        doomed = set(flights)
        kept = {f.request_id for f in self._flights.values()
                if f not in doomed and f.request_id is not None}
        for flight in flights:
            if flight.request_id is not None and flight.request_id not in kept:
                self._by_id.pop(flight.request_id, None)
                self.engine.abort(flight.request_id)
            flight.task.cancel()
        self.aborted += len(flights)
        await asyncio.gather(*(f.task for f in flights), return_exceptions=True)

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
                key = MessageKey(tp.topic, tp.partition, record.offset)
                self._flights[key] = flight = Flight(task)
                task.add_done_callback(functools.partial(self._landed, key, flight))

    def _landed(self, key: MessageKey, flight: Flight, _: object) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    # -- serving one message -------------------------------------------------------------

    async def _handle(
        self, bin_consumer: BinConsumer, tp: TopicPartition, record: ConsumerRecord,
        received: float,
    ) -> None:
        acknowledged = False
        span = self.telemetry.start_process(
            record, self.config.group_id(bin_consumer.bin), start_ns=seconds_to_ns(received),
            attributes={BIN: bin_consumer.bin})
        key = MessageKey(record.topic, record.partition, record.offset)
        try:
            try:
                acknowledged = await self._attempt(key, bin_consumer, record, span, received)
            except Exception as exc:  # a bug: answer the request instead of stalling commits
                log.exception("serving %s[%d]@%d failed", record.topic, record.partition,
                              record.offset)
                mark_error(span, exc)
                error = ErrorInfo(ErrorCode.INTERNAL, f"worker error: {exc!r}")
                acknowledged = await self._reject(record, bin_consumer.bin, error,
                                                  recover_id(record.value or b""), span)
        except BaseException as exc:  # aborted (revoke, drain timeout): redelivered later
            mark_error(span, exc)
            flight = self._flights.get(key)
            if isinstance(exc, asyncio.CancelledError) and flight is not None and flight.counted:
                self.journal.undo(key)  # stopped on purpose: not an attempt that crashed
            raise
        finally:
            span.end()
            if acknowledged:
                self.journal.clear(key)
                bin_consumer.tracker.done(tp, record.offset)
                self.served += 1
            self.in_flight -= 1
            self._set_depth(bin_consumer, -1)
            self._capacity_freed.set()

    async def _attempt(self, key: MessageKey, bin_consumer: BinConsumer,
                       record: ConsumerRecord, span: Span, received: float) -> bool:
        """Serve the message unless workers died serving it ``max_attempts`` times (then
        dead-letter it as ``poison``); after one such death it runs alone."""
        prior = self.journal.attempts(key)
        if prior >= self.config.max_attempts:
            error = ErrorInfo(ErrorCode.POISON, (
                f"a worker died {prior} times while serving this message "
                f"(--max-attempts {self.config.max_attempts}); it is not tried again"))
            request_id = record.key.decode(errors="replace") if record.key else None
            return await self._reject(record, bin_consumer.bin, error,
                                      request_id or recover_id(record.value or b""), span)
        if prior:
            log.warning("%s[%d]@%d was in flight when a worker died (%d times): running it "
                        "alone", record.topic, record.partition, record.offset, prior)
        flight = self._flights[key]
        async with self._gate.enter(alone=prior > 0):
            # One writer thread: messages enter the engine in the order they were taken.
            await asyncio.get_running_loop().run_in_executor(self._journal_writer,
                                                             self.journal.begin, key)
            flight.counted = True
            return await self._serve_record(bin_consumer, record, span, received, flight)

    async def _serve_record(self, bin_consumer: BinConsumer, record: ConsumerRecord,
                            span: Span, received: float, flight: Flight) -> bool:
        """Serve one message; True once everything it caused is acknowledged."""
        try:
            binned = decode_binned(record.value or b"")
        except InvalidMessage as exc:
            error = ErrorInfo(exc.code, str(exc))
            request_id = exc.request_id or key_id(record.key)
            return await self._reject(record, bin_consumer.bin, error, request_id, span)
        self.telemetry.annotate(span, binned)
        try:
            request = to_generation_request(binned)
        except ValueError as exc:
            error = ErrorInfo(ErrorCode.INVALID_REQUEST, f"invalid binned request: {exc}")
            return await self._reject(record, bin_consumer.bin, error, binned.request.id, span,
                                      binned)
        if self._reuses_id(request):
            error = ErrorInfo(ErrorCode.DUPLICATE_ID,
                              f"id {request.id!r} is in flight with a different request: "
                              "give every request its own id")
            return await self._reject(record, bin_consumer.bin, error, request.id, span, binned)
        flight.stage, flight.request_id = "engine", request.id
        try:
            output = await asyncio.shield(self._submit(request))
        except Exception as exc:
            # The engine itself broke: leave the message uncommitted for a healthy worker.
            log.exception("engine failed on request %s; stopping", request.id)
            mark_error(span, exc)
            self.failed = True
            self._stop.set()
            return False
        flight.stage, flight.request_id = "publishing", None
        if self.telemetry.enabled:  # the stages, from the engine's timestamps, afterwards
            timeline = GenerationTimeline.from_output(output, received)
            self.telemetry.record_generation(span, timeline, request.id)
        result = build_result(binned, output, self.config.worker_id)
        self.telemetry.annotate(span, result)
        sends = [self._publish(self.config.results_topic, result, request.id, record, span)]
        if result.error is not None:
            mark_error(span, result.error.code)
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

    def _reuses_id(self, request: GenerationRequest) -> bool:
        """True when a different request under the same id is in the engine (a redelivered
        copy of the same request is not: it shares the first one's future)."""
        held = self._by_id.get(request.id)
        return held is not None and not same_request(held[0], request)

    def _submit(self, request: GenerationRequest) -> asyncio.Future[GenerationOutput]:
        # A redelivered id still in the engine (revoke, then re-assign) shares its future.
        held = self._by_id.get(request.id)
        if held is not None:
            return held[1]
        future = self.engine.submit(request)
        self._by_id[request.id] = (request, future)
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
    kafka: KafkaConfig,
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
