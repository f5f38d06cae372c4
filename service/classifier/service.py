"""The Kafka classifier: the router's decisions applied to the requests topic.

``Classifier`` reads
``<prefix>.requests`` in batches, produces each decision as a ``BinnedRequest`` to
``<prefix>.bin.<i>`` (bad input: a ``DeadLetter`` and, when the id is known, an error
``Result``), and commits a batch's offsets only once the broker acknowledged every
message that batch produced. It also follows ``<prefix>.results`` to feed actual output
lengths back to the predictor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition
from binbaton.schemas.codec import (
    InvalidMessage,
    dead_letter,
    decode_request,
    decode_result,
    encode,
    error_result,
    key_id,
    now_ms,
    recover_id,
)
from binbaton.schemas.errors import ErrorCode
from binbaton.schemas.messages import BinnedRequest, DeadLetter, ErrorInfo, Request, Timings
from binbaton.schemas.settings import ConfigError
from binbaton.service.classifier.config import ClassifierConfig
from binbaton.service.classifier.router import Decision, Router, decide_guarded
from binbaton.service.kafka.attempts import AttemptJournal, MessageKey, default_state_dir
from binbaton.service.kafka.config import KafkaConfig
from binbaton.service.kafka.topics import TopicsConfig, create_service_topics
from binbaton.service.predictor.interface import PredictionInput
from binbaton.service.telemetry import tracing
from binbaton.service.telemetry.metrics import Metrics, MetricsConfig, update_consumer_lag
from binbaton.service.telemetry.tracing import (
    CLASSIFIER_SERVICE,
    StageTimer,
    Telemetry,
    mark_error,
)
from opentelemetry.trace import Span

log = logging.getLogger("binbaton.classifier")

TRACE_HEADERS = ("traceparent", "tracestate")
DEAD_LETTER_RAW_LIMIT = 64 * 1024  # bytes of an oversized message kept in its dead letter
LAG_INTERVAL_S = 5.0


# ---------------------------------------------------------------------------------------
# The Kafka service.


class RecentInputs:
    """Bounded LRU map: request id -> what the predictor saw, until its result arrives."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, PredictionInput] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, request_id: str, item: PredictionInput) -> None:
        self._items[request_id] = item
        self._items.move_to_end(request_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def pop(self, request_id: str) -> PredictionInput | None:
        return self._items.pop(request_id, None)


class _FinishBatchBeforeRevoke(ConsumerRebalanceListener):
    """Partitions are handed over only between batches: the batch in hand is routed and
    committed first, so the next owner does not route it again."""

    def __init__(self, batch_lock: asyncio.Lock) -> None:
        self.batch_lock = batch_lock

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.batch_lock:
            pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("classifier assigned %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))


@dataclass
class ClassifierStats:
    routed: int = 0
    rejected: int = 0
    observed: int = 0
    batches: int = 0


class Classifier:
    """Consumes requests, produces bin messages, dead letters and error results."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topics: TopicsConfig,
        config: ClassifierConfig,
        router: Router | None = None,
        telemetry: Telemetry | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if config.num_bins != topics.num_bins:
            raise ConfigError(f"{config.num_bins} bins from the edges {config.bin_edges}, "
                              f"but {topics.num_bins} bin topics")
        self.kafka = kafka
        self.topics = topics
        self.config = config
        self.router = router or Router.from_config(config)
        self.recent = RecentInputs(config.observe_cache)
        self.stats = ClassifierStats()
        self.telemetry = telemetry or Telemetry.disabled(CLASSIFIER_SERVICE)
        self.metrics = metrics
        self._lag_updated = 0.0
        self._spans: dict[int, Span] = {}  # id(record) -> its `process` span, this batch
        self._batch_lock = asyncio.Lock()
        self.journal = AttemptJournal(Path(config.state_dir) if config.state_dir
                                      else default_state_dir())
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._feedback: AIOKafkaConsumer | None = None

    # -- lifecycle (start and stop mirror each other) --

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(**self.kafka.producer_kwargs("binbaton-classifier"))
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            **self.kafka.consumer_kwargs(self.topics.classifier_group, "binbaton-classifier"),
            max_poll_records=self.config.batch_size,
        )
        self._consumer.subscribe([self.topics.requests],
                                 listener=_FinishBatchBeforeRevoke(self._batch_lock))
        await self._consumer.start()
        if self.config.learn_from_results:
            self._feedback = AIOKafkaConsumer(
                self.topics.results,
                **self.kafka.consumer_kwargs(self.topics.feedback_group, "binbaton-classifier"),
            )
            await self._feedback.start()

    async def stop(self) -> None:
        if self._feedback is not None:
            await self._feedback.stop()
            self._feedback = None
            await self._save_predictor()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def run(self, stop: asyncio.Event, started: asyncio.Event | None = None) -> None:
        """Route batches until ``stop`` is set; the batch in hand is finished first.

        ``started`` is set once the clients are connected."""
        await self.start()
        if started is not None:
            started.set()
        try:
            tasks = [asyncio.create_task(self._route_loop(stop), name="classifier-route")]
            if self._feedback is not None:
                tasks.append(asyncio.create_task(self._feedback_loop(stop), name="feedback"))
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await self.stop()

    # -- routing --

    async def _route_loop(self, stop: asyncio.Event) -> None:
        assert self._consumer is not None
        while not stop.is_set():
            batches = await self._consumer.getmany(
                timeout_ms=self.config.poll_timeout_ms, max_records=self.config.batch_size
            )
            if batches:
                async with self._batch_lock:
                    await self._route_batch(batches)
            await self._update_lag()

    async def _update_lag(self) -> None:
        """Consumer lag of the requests topic, every few seconds (when metrics are on)."""
        if self.metrics is None or time.monotonic() - self._lag_updated < LAG_INTERVAL_S:
            return
        self._lag_updated = time.monotonic()
        assert self._consumer is not None
        with contextlib.suppress(KafkaError, AssertionError):
            await update_consumer_lag(self.metrics, self._consumer)

    async def _route_batch(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        assert self._consumer is not None
        records = [record for part in batches.values() for record in part]
        try:
            for group in self._attempt_groups(records):
                await self._route_group(group)
        except KafkaError as exc:
            # Nothing of this batch is committed: go back and route it again.
            log.warning("producing a batch failed (%s); routing it again", exc)
            self._end_spans(exc)
            for tp, part in batches.items():
                self._consumer.seek(tp, part[0].offset)
            await asyncio.sleep(0.5)
            return
        offsets = {tp: part[-1].offset + 1 for tp, part in batches.items()}
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # Partitions moved on: the next owner routes them again (at-least-once).
            log.warning("commit failed after routing (%s); duplicates may follow", exc)
        self.stats.batches += 1

    def _attempt_groups(self, records: list[ConsumerRecord]) -> list[list[ConsumerRecord]]:
        """Messages this process (or a predecessor) died on ``max_attempts`` times, each
        alone (dead-lettered as poison); those it died on fewer times, each alone; then the
        rest together (``service/kafka/attempts.py``)."""
        prior = [self.journal.attempts(attempt_key(r)) for r in records]
        poison = [[r] for r, n in zip(records, prior, strict=True)
                  if n >= self.config.max_attempts]
        alone = [[r] for r, n in zip(records, prior, strict=True)
                 if 0 < n < self.config.max_attempts]
        rest = [r for r, n in zip(records, prior, strict=True) if n == 0]
        return [*poison, *alone, *([rest] if rest else [])]

    async def _route_group(self, records: list[ConsumerRecord]) -> None:
        """Count the attempt, route (or dead-letter a poison pill), wait for the broker's
        acknowledgements, forget the attempt."""
        keys = [attempt_key(r) for r in records]
        prior = self.journal.attempts(keys[0])
        if prior >= self.config.max_attempts:
            acks: list[asyncio.Future[Any]] = []
            problem = InvalidMessage(ErrorCode.POISON, (
                f"the classifier died {prior} times while routing this message "
                f"(--max-attempts {self.config.max_attempts}); it is not tried again"),
                key_id(records[0].key))
            await self._reject(records[0], problem, now_ms(), acks)
        else:
            if prior:
                log.warning("%s[%d]@%d was in flight when a classifier died (%d times): "
                            "routing it alone", records[0].topic, records[0].partition,
                            records[0].offset, prior)
            await asyncio.to_thread(self._begin, keys)
            acks = await self.route(records)
        await asyncio.gather(*acks)
        self._end_spans()
        for key in keys:
            self.journal.clear(key)

    def _begin(self, keys: list[MessageKey]) -> None:
        for key in keys:
            self.journal.begin(key)

    async def route(self, records: Sequence[ConsumerRecord]) -> list[asyncio.Future[Any]]:
        """Decide and send every record; returns the broker acknowledgements to await."""
        received = now_ms()
        if self.telemetry.enabled:
            start_ns = time.time_ns()
            self._spans = {id(r): self.telemetry.start_process(
                r, self.topics.classifier_group, start_ns=start_ns) for r in records}
        acks: list[asyncio.Future[Any]] = []
        requests: list[tuple[ConsumerRecord, Request]] = []
        for record in records:
            try:
                request = await self._decode(record, received, acks)
            except KafkaError:
                raise
            except Exception as exc:  # a bug on one message: answer it, keep routing
                await self._reject_internal(record, exc, received, acks)
                continue
            if request is not None:
                requests.append((record, request))
        timer = StageTimer()
        outcomes = decide_guarded(self.router, [request for _, request in requests], timer)
        classified = now_ms()
        for record, request in requests:
            span = self._spans.get(id(record))
            if span is not None:
                self.telemetry.annotate(span, request)
                self.telemetry.record_stages(span, timer, request.id)
        for (record, request), outcome in zip(requests, outcomes, strict=True):
            try:
                if isinstance(outcome, Decision):
                    acks.append(await self._send_binned(record, outcome, received, classified))
                else:
                    await self._reject(record, outcome, received, acks, request)
            except KafkaError:
                raise
            except Exception as exc:
                await self._reject_internal(record, exc, received, acks, request.id)
        return acks

    async def _reject_internal(self, record: ConsumerRecord, exc: Exception, received: int,
                               acks: list[asyncio.Future[Any]],
                               request_id: str | None = None) -> None:
        log.exception("classifying %s[%d]@%d failed", record.topic, record.partition,
                      record.offset)
        problem = InvalidMessage(ErrorCode.INTERNAL,
                                 f"the classifier failed on this message: {exc!r}",
                                 request_id or key_id(record.key))
        await self._reject(record, problem, received, acks)

    async def _decode(
        self, record: ConsumerRecord, received: int, acks: list[asyncio.Future[Any]]
    ) -> Request | None:
        raw = record.value or b""
        if len(raw) > self.config.max_request_bytes:
            problem = InvalidMessage(
                ErrorCode.MESSAGE_TOO_LARGE,
                f"request is {len(raw)} bytes; the limit is {self.config.max_request_bytes}",
                recover_id(raw),
            )
            await self._reject(record, problem, received, acks)
            return None
        try:
            request = decode_request(raw)
        except InvalidMessage as problem:
            if problem.request_id is None:
                problem.request_id = key_id(record.key)
            await self._reject(record, problem, received, acks)
            return None
        if record.key and record.key != request.id.encode():
            mismatch = InvalidMessage(
                ErrorCode.KEY_MISMATCH,
                f"the message key {record.key[:64]!r} is not the request id {request.id!r}: "
                "key each request by its id (or send it without a key)", request.id)
            await self._reject(record, mismatch, received, acks, request)
            return None
        return request

    async def _send_binned(
        self, record: ConsumerRecord, decision: Decision, received: int, classified: int
    ) -> asyncio.Future[Any]:
        assert self._producer is not None
        message = BinnedRequest(
            request=decision.request,
            prompt_token_ids=list(decision.prompt_token_ids),
            predicted_tokens=decision.predicted_tokens,
            bin=decision.bin,
            received=received,
            classified=classified,
        )
        self.recent.put(decision.request.id, decision.features)
        self.stats.routed += 1
        if self.metrics is not None:
            self.metrics.observe_routed(decision.bin)
        return await self._send(record, self.topics.bin(decision.bin), message,
                                decision.request.id.encode())

    async def _send(
        self, record: ConsumerRecord, topic: str, message: Any, key: bytes | None
    ) -> asyncio.Future[Any]:
        """Produce ``message``; with tracing, under a ``send`` span child of the record's
        ``process`` span, else with the record's trace headers passed on unchanged."""
        assert self._producer is not None
        span = self._spans.get(id(record))
        if span is None:
            return await self._producer.send(topic, value=encode(message), key=key,
                                             headers=_trace_headers(record))
        described = None if isinstance(message, DeadLetter) else message  # no request fields
        send = self.telemetry.start_send(topic, key, message=described, parent=span)
        ack = await self._producer.send(topic, value=encode(message), key=key,
                                        headers=send.headers)
        return send.end_when(ack)

    def _end_spans(self, error: BaseException | None = None) -> None:
        for span in self._spans.values():
            if error is not None:
                mark_error(span, error)
            span.end()
        self._spans = {}

    async def _reject(
        self,
        record: ConsumerRecord,
        problem: InvalidMessage,
        received: int,
        acks: list[asyncio.Future[Any]],
        request: Request | None = None,
    ) -> None:
        assert self._producer is not None
        self.stats.rejected += 1
        if self.metrics is not None:
            self.metrics.observe_rejected("classifier", problem.code)
        error = ErrorInfo(code=problem.code, message=str(problem))
        request_id = problem.request_id
        log.info("rejected %s at %s:%d@%d: %s", request_id, record.topic, record.partition,
                 record.offset, error.message)
        span = self._spans.get(id(record))
        if span is not None:
            mark_error(span, error.code)
            span.set_attribute(tracing.ERROR_CODE, error.code)
            if request_id is not None:
                span.set_attribute(tracing.REQUEST_ID, request_id)
        raw = (record.value or b"")[:DEAD_LETTER_RAW_LIMIT]
        letter = dead_letter(raw, error, record.topic, record.partition, record.offset,
                             request_id, stage="classifier")
        key = request_id.encode() if request_id else None
        acks.append(await self._send(record, self.topics.dlq, letter, key))
        if request_id is None:
            return
        result = error_result(
            request_id,
            error,
            timings=Timings(received=received, finished=now_ms()),
            metadata=dict(request.metadata) if request is not None else {},
        )
        acks.append(await self._send(record, self.topics.results, result, key))

    # -- learning from actual lengths --

    async def _save_predictor(self) -> None:
        """Snapshot what the predictor learned since its last periodic save (a restart
        resumes from it). Nothing learned this run: nothing written, so a snapshot never
        shadows a newer trained artifact without reason."""
        save = getattr(self.router.predictor, "save_snapshot", None)
        if save is None or self.stats.observed == 0:
            return
        try:
            await asyncio.to_thread(save)
        except Exception:  # stopping must finish: the consumer and producer still close
            log.exception("saving the predictor's snapshot failed")

    async def _feedback_loop(self, stop: asyncio.Event) -> None:
        assert self._feedback is not None
        while not stop.is_set():
            batches = await self._feedback.getmany(timeout_ms=self.config.poll_timeout_ms)
            observed: list[tuple[PredictionInput, int]] = []
            for record in (r for part in batches.values() for r in part):
                try:
                    result = decode_result(record.value or b"")
                except InvalidMessage:
                    continue  # not ours to judge: the results topic's readers see it as is
                item = self.recent.pop(result.id)
                if item is not None and result.status == "ok":
                    observed.append((item, result.usage.completion_tokens))
            if observed:
                try:
                    self.router.predictor.observe(observed)
                except Exception:  # a predictor bug must not stop routing
                    log.exception("predictor.observe failed")
                self.stats.observed += len(observed)
            if batches:
                with contextlib.suppress(CommitFailedError, KafkaError):
                    await self._feedback.commit(
                        {tp: part[-1].offset + 1 for tp, part in batches.items()}
                    )


def attempt_key(record: ConsumerRecord) -> MessageKey:
    return MessageKey(record.topic, record.partition, record.offset)


def _trace_headers(record: ConsumerRecord) -> list[tuple[str, bytes]]:
    """W3C trace context headers of the incoming message, unchanged."""
    return [(k, v) for k, v in (record.headers or ()) if k in TRACE_HEADERS]


async def run_classifier(
    kafka: KafkaConfig,
    topics: TopicsConfig,
    config: ClassifierConfig,
    stop: asyncio.Event,
    started: asyncio.Event | None = None,
    tracing_config: tracing.TracingConfig | None = None,
    metrics_config: MetricsConfig | None = None,
) -> ClassifierStats:
    """Create the topics (idempotent), load the tokenizer, classify until ``stop`` is set.

    With ``tracing_config`` (enabled), spans go to the traces topic (and OTLP if set);
    with ``metrics_config`` (a port), Prometheus metrics are served there."""
    await create_service_topics(kafka.bootstrap_servers, topics)
    router = await asyncio.to_thread(Router.from_config, config)
    telemetry = None
    if tracing_config is not None and tracing_config.enabled:
        telemetry = tracing.setup_tracing(CLASSIFIER_SERVICE, tracing_config,
                                          bootstrap_servers=kafka.bootstrap_servers,
                                          traces_topic=topics.traces, model=config.model)
    metrics = None
    if metrics_config is not None and metrics_config.port:
        metrics = Metrics(model=config.model)
        port = metrics.serve(metrics_config)
        log.info("classifier metrics on port %s", port)
    classifier = Classifier(kafka, topics, config, router, telemetry, metrics)
    try:
        await classifier.run(stop, started)
    finally:
        if telemetry is not None:
            await asyncio.to_thread(telemetry.shutdown)
        if metrics is not None:
            metrics.close()
    return classifier.stats
