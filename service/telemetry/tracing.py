"""OpenTelemetry tracing across the Kafka hops: one adapter from messages to span attributes.

One trace per request (README's "Observability"):

    client      send binbaton.requests                       (PRODUCER, root)
    classifier  process binbaton.requests                    (CONSUMER, child of the send)
                  validate, tokenize, predict, route         (INTERNAL children)
                  send binbaton.bin.<i>                      (PRODUCER)
    worker      process binbaton.bin.<i>                     (CONSUMER)
                  queue wait, prefill, kv insert, decode     (made afterwards from timestamps)
                  send binbaton.results                      (PRODUCER)

The W3C ``traceparent``/``tracestate`` headers carry the context from one hop to the next.
Attribute names follow the OpenTelemetry messaging (Kafka) and GenAI semantic conventions;
every span about a request carries ``binbaton.request.id``. Each process owns one
``Telemetry`` with its own TracerProvider (resource ``service.name``); nothing is global,
so a client, a classifier and workers can share one Python process and stay apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from binbaton.schemas.settings import boolean, setting
from binbaton.schemas.topics import TopicNames
from binbaton.service.telemetry.trace_export import build_exporters
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.semconv._incubating.attributes import messaging_attributes as messaging
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Headers = list[tuple[str, bytes]]

CLIENT_SERVICE = "binbaton-client"
CLASSIFIER_SERVICE = "binbaton-classifier"
WORKER_SERVICE = "binbaton-worker"
INSTRUMENTATION_NAME = "binbaton"

# binbaton's own attributes.
REQUEST_ID = "binbaton.request.id"
BIN = "binbaton.bin"
PREDICTED_TOKENS = "binbaton.predicted_tokens"
STATUS = "binbaton.status"
ERROR_CODE = "binbaton.error.code"
WORKER = "binbaton.worker"
MEASURED = "binbaton.timing.measured"  # False: the engine gave no timestamp for this stage

# GenAI conventions. The Python semconv package marks these deprecated only because they
# moved to the separate semantic-conventions-genai repository; the names are current there.
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_REQUEST_TOP_K = "gen_ai.request.top_k"
GEN_AI_REQUEST_SEED = "gen_ai.request.seed"
GEN_AI_REQUEST_STOP_SEQUENCES = "gen_ai.request.stop_sequences"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
TEXT_COMPLETION = "text_completion"  # gen_ai.operation.name: OpenAI completions-style API
CHAT = "chat"  # gen_ai.operation.name: a `messages` request (chat completions)
ERROR_TYPE = "error.type"

KAFKA = "kafka"  # messaging.system

# Names of the child spans (one place, so tests and dashboards agree).
VALIDATE, TOKENIZE, PREDICT, ROUTE = "validate", "tokenize", "predict", "route"
QUEUE_WAIT, PREFILL, KV_INSERT, DECODE = "queue wait", "prefill", "kv insert", "decode"

_PROPAGATOR = TraceContextTextMapPropagator()  # W3C traceparent + tracestate, nothing else


@dataclass(frozen=True)
class TracingConfig:
    """Whether and how a process traces. ``enabled=False`` turns tracing off entirely.

    ``kafka_export``: batched OTLP protobuf to the traces topic. OTLP gRPC/HTTP export is
    added when ``otlp_endpoint`` is set, or else when the standard
    ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` variable is (the OTel exporter reads it).
    """

    enabled: bool = field(default=True, metadata=setting(
        "OpenTelemetry spans to <prefix>.traces (and OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is "
        "set); false turns tracing off", flag="tracing", parse=boolean))
    kafka_export: bool = True
    otlp_endpoint: str | None = None
    otlp_protocol: Literal["grpc", "http/protobuf"] | None = None  # None: OTEL_*_PROTOCOL
    export_delay_ms: int = 500  # BatchSpanProcessor schedule delay
    max_export_batch: int = 512
    max_queue_size: int = 8192

    def __post_init__(self) -> None:
        if self.otlp_protocol not in (None, "grpc", "http/protobuf"):
            raise ValueError(f"otlp_protocol must be grpc or http/protobuf, "
                             f"got {self.otlp_protocol!r}")
        if self.export_delay_ms < 1:
            raise ValueError(f"export_delay_ms must be >= 1, got {self.export_delay_ms}")
        if not 1 <= self.max_export_batch <= self.max_queue_size:
            raise ValueError("need 1 <= max_export_batch <= max_queue_size, got "
                             f"{self.max_export_batch} and {self.max_queue_size}")


# ---------------------------------------------------------------------------------------
# The adapter: messages and requests -> span attributes. Duck-typed on the wire structs of
# binbaton.schemas (Request, BinnedRequest, Result) and on aiokafka's ConsumerRecord.


class KafkaRecord(Protocol):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: Sequence[tuple[str, bytes]]


def key_text(key: bytes | str | None) -> str | None:
    if key is None or isinstance(key, str):
        return key
    return key.decode("utf-8", errors="replace")


def send_attributes(topic: str, key: bytes | str | None = None) -> dict[str, Any]:
    """Messaging attributes of a producer's ``send <topic>`` span."""
    attributes: dict[str, Any] = {
        messaging.MESSAGING_SYSTEM: KAFKA,
        messaging.MESSAGING_OPERATION_TYPE: "send",
        messaging.MESSAGING_OPERATION_NAME: "send",
        messaging.MESSAGING_DESTINATION_NAME: topic,
    }
    text = key_text(key)
    if text is not None:
        attributes[messaging.MESSAGING_KAFKA_MESSAGE_KEY] = text
    return attributes


def record_attributes(record: KafkaRecord, group: str | None) -> dict[str, Any]:
    """Messaging attributes of a consumer's ``process <topic>`` span for one record."""
    attributes: dict[str, Any] = {
        messaging.MESSAGING_SYSTEM: KAFKA,
        messaging.MESSAGING_OPERATION_TYPE: "process",
        messaging.MESSAGING_OPERATION_NAME: "process",
        messaging.MESSAGING_DESTINATION_NAME: record.topic,
        messaging.MESSAGING_DESTINATION_PARTITION_ID: str(record.partition),
        messaging.MESSAGING_KAFKA_OFFSET: record.offset,
        # topic/partition/offset identify a Kafka message uniquely.
        messaging.MESSAGING_MESSAGE_ID: f"{record.topic}/{record.partition}/{record.offset}",
    }
    if group:
        attributes[messaging.MESSAGING_CONSUMER_GROUP_NAME] = group
    text = key_text(record.key)
    if text is not None:
        attributes[messaging.MESSAGING_KAFKA_MESSAGE_KEY] = text
        attributes[REQUEST_ID] = text  # the key is the request id on every request topic
    value = getattr(record, "value", None)
    if value is not None:
        attributes[messaging.MESSAGING_MESSAGE_BODY_SIZE] = len(value)
    return attributes


def request_attributes(request: Any, model: str | None = None) -> dict[str, Any]:
    """GenAI request attributes of a ``Request``, plus ``binbaton.request.id``."""
    attributes: dict[str, Any] = {
        REQUEST_ID: request.id,
        GEN_AI_OPERATION_NAME: TEXT_COMPLETION if request.messages is None else CHAT,
        GEN_AI_REQUEST_MAX_TOKENS: request.max_tokens,
        GEN_AI_REQUEST_TEMPERATURE: float(request.temperature),
        GEN_AI_REQUEST_TOP_P: float(request.top_p),
    }
    if request.top_k:
        attributes[GEN_AI_REQUEST_TOP_K] = float(request.top_k)
    if request.seed is not None:
        attributes[GEN_AI_REQUEST_SEED] = request.seed
    if request.stop:
        attributes[GEN_AI_REQUEST_STOP_SEQUENCES] = request.stop_strings
    if model:
        attributes[GEN_AI_REQUEST_MODEL] = model
    if request.prompt_token_ids is not None:
        attributes[GEN_AI_USAGE_INPUT_TOKENS] = len(request.prompt_token_ids)
    return attributes


def binned_attributes(binned: Any, model: str | None = None) -> dict[str, Any]:
    """A ``BinnedRequest``: its request, prompt length, predicted length and bin."""
    attributes = request_attributes(binned.request, model)
    attributes[GEN_AI_USAGE_INPUT_TOKENS] = len(binned.prompt_token_ids)
    attributes[PREDICTED_TOKENS] = binned.predicted_tokens
    attributes[BIN] = binned.bin
    return attributes


def result_attributes(result: Any) -> dict[str, Any]:
    """A ``Result``: usage, finish reason, status, bin, prediction and error code."""
    attributes: dict[str, Any] = {
        REQUEST_ID: result.id,
        GEN_AI_RESPONSE_ID: result.id,
        STATUS: result.status,
        GEN_AI_RESPONSE_FINISH_REASONS: [result.finish_reason],
        GEN_AI_USAGE_INPUT_TOKENS: result.usage.prompt_tokens,
        GEN_AI_USAGE_OUTPUT_TOKENS: result.usage.completion_tokens,
    }
    if result.bin is not None:
        attributes[BIN] = result.bin
    if result.predicted_tokens is not None:
        attributes[PREDICTED_TOKENS] = result.predicted_tokens
    if result.worker:
        attributes[WORKER] = result.worker
    if result.error is not None:
        attributes[ERROR_CODE] = result.error.code
        attributes[ERROR_TYPE] = result.error.code
    return attributes


def message_attributes(message: Any, model: str | None = None) -> dict[str, Any]:
    """Attributes of any request-level wire struct (Request, BinnedRequest or Result)."""
    if hasattr(message, "prompt_token_ids") and hasattr(message, "request"):
        return binned_attributes(message, model)
    if hasattr(message, "status") and hasattr(message, "usage"):
        return result_attributes(message)
    return request_attributes(message, model)


# ---------------------------------------------------------------------------------------
# W3C context <-> Kafka headers.


class _HeaderSetter(Setter[Headers]):
    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier.append((key, value.encode("ascii")))


class _HeaderGetter(Getter[Sequence[tuple[str, bytes]]]):
    def get(self, carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        values = [
            value.decode("ascii", errors="replace")
            for name, value in carrier or ()
            if name.lower() == key and value is not None
        ]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [name for name, _ in carrier or ()]


def inject_headers(context: otel_context.Context | Span | None = None) -> Headers:
    """``traceparent``/``tracestate`` Kafka headers for a context or span (default: current)."""
    if isinstance(context, Span):
        context = trace.set_span_in_context(context)
    headers: Headers = []
    _PROPAGATOR.inject(headers, context=context, setter=_HeaderSetter())
    return headers


def extract_context(headers: Sequence[tuple[str, bytes]] | None) -> otel_context.Context:
    """The trace context carried by a record's headers (an empty context if none)."""
    return _PROPAGATOR.extract(list(headers or ()), getter=_HeaderGetter())


# ---------------------------------------------------------------------------------------
# Timestamps recorded while decoding, turned into spans afterwards.


def seconds_to_ns(seconds: float) -> int:
    return int(seconds * 1e9)


@dataclass(frozen=True)
class GenerationTimeline:
    """Unix-ns times of one request's stages in a worker.

    The engine records plain floats while it runs; spans are made from them after the
    request finished, so tracing adds nothing to the decode loop. ``prefilled_ns`` (its
    prefill ended) and ``inserted_ns`` (its K/V joined the running batch) are None when the
    engine does not report them; the prefill then ends at the first token and the KV
    insertion is shown as an instant there, marked ``binbaton.timing.measured = false``.
    """

    received_ns: int  # the worker read the message: queue wait starts
    finished_ns: int
    admitted_ns: int | None = None  # the scheduler took it: prefill starts
    prefilled_ns: int | None = None
    inserted_ns: int | None = None
    first_token_ns: int | None = None
    output_tokens: int = 0

    @classmethod
    def from_output(cls, output: Any, received_at: float) -> GenerationTimeline:
        """From an engine ``GenerationOutput`` (unix seconds) and the worker's receipt time.

        Reads the optional ``prefill_finished_at`` / ``inserted_at`` fields when the engine
        provides them.
        """

        def ns(seconds: float | None) -> int | None:
            return None if seconds is None else seconds_to_ns(seconds)

        return cls(
            received_ns=seconds_to_ns(received_at),
            finished_ns=seconds_to_ns(output.finished_at or time.time()),
            admitted_ns=ns(output.admitted_at),
            prefilled_ns=ns(getattr(output, "prefill_finished_at", None)),
            inserted_ns=ns(getattr(output, "inserted_at", None)),
            first_token_ns=ns(output.first_token_at),
            output_tokens=len(output.token_ids),
        )

    def stages(self) -> list[tuple[str, int, int, dict[str, Any]]]:
        """(name, start_ns, end_ns, attributes) of each stage that happened, in order."""
        stages: list[tuple[str, int, int, dict[str, Any]]] = []
        queue_end = self.admitted_ns if self.admitted_ns is not None else self.finished_ns
        stages.append((QUEUE_WAIT, self.received_ns, queue_end, {}))
        if self.admitted_ns is None or self.first_token_ns is None:
            return stages  # never admitted, or failed before producing a token
        prefill_end = self.prefilled_ns if self.prefilled_ns is not None else self.first_token_ns
        stages.append((PREFILL, self.admitted_ns, prefill_end,
                       {MEASURED: self.prefilled_ns is not None}))
        if self.inserted_ns is not None:
            stages.append((KV_INSERT, prefill_end, self.inserted_ns, {MEASURED: True}))
            decode_start = self.inserted_ns
        else:
            stages.append((KV_INSERT, prefill_end, prefill_end, {MEASURED: False}))
            decode_start = prefill_end
        stages.append((DECODE, decode_start, self.finished_ns,
                       {GEN_AI_USAGE_OUTPUT_TOKENS: self.output_tokens}))
        return stages


class StageTimer:
    """Unix-ns start/end of named stages, recorded while code runs (a ``time_ns`` call at
    each edge, no spans), for ``Telemetry.record_stages`` afterwards. One timer can cover a
    whole batch: the classifier tokenizes and predicts many requests in one call."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, int, int]] = []

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        start = time.time_ns()
        try:
            yield
        finally:
            self.stages.append((name, start, time.time_ns()))


# ---------------------------------------------------------------------------------------
# The per-process object the services call.


@dataclass
class SendSpan:
    """A producer span and the headers that carry it; end it when the broker acknowledged."""

    span: Span
    headers: Headers = field(default_factory=list)

    def acknowledged(self, metadata: Any) -> None:
        """Record where the message landed (aiokafka RecordMetadata: partition, offset)."""
        self.span.set_attribute(messaging.MESSAGING_DESTINATION_PARTITION_ID,
                                str(metadata.partition))
        self.span.set_attribute(messaging.MESSAGING_KAFKA_OFFSET, metadata.offset)

    def end(self, error: BaseException | None = None) -> None:
        if error is not None:
            mark_error(self.span, error)
        self.span.end()

    def end_when(self, ack: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """End the span when the producer's acknowledgement future resolves (recording the
        partition and offset, or the error); returns ``ack`` for the caller to await."""

        def done(future: asyncio.Future[Any]) -> None:
            if future.cancelled():
                self.end(asyncio.CancelledError("send cancelled"))
            elif future.exception() is not None:
                self.end(future.exception())
            else:
                self.acknowledged(future.result())
                self.end()

        ack.add_done_callback(done)
        return ack


def mark_error(span: Span, error: BaseException | str) -> None:
    """Status ERROR plus ``error.type``; an exception is also recorded as an event."""
    if isinstance(error, BaseException):
        span.record_exception(error)
        span.set_attribute(ERROR_TYPE, type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, str(error)))
    else:
        span.set_attribute(ERROR_TYPE, error)
        span.set_status(Status(StatusCode.ERROR, error))


Parent = otel_context.Context | Span | None


def _context_of(parent: Parent) -> otel_context.Context | None:
    """A Context for ``parent``; None means the current context."""
    if isinstance(parent, Span):
        return trace.set_span_in_context(parent)
    return parent


class Telemetry:
    """One process's tracing: its tracer, the hop spans and the header propagation.

    Build it with ``setup_tracing``; ``Telemetry.disabled()`` traces nothing (every method
    still works and costs next to nothing).
    """

    def __init__(self, service_name: str, provider: TracerProvider | None,
                 model: str | None = None) -> None:
        self.service_name = service_name
        self.provider = provider
        self.model = model
        self.tracer: trace.Tracer = (
            provider.get_tracer(INSTRUMENTATION_NAME) if provider else trace.NoOpTracer()
        )

    @classmethod
    def disabled(cls, service_name: str = "binbaton") -> Telemetry:
        return cls(service_name, None)

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    # -- producers -------------------------------------------------------------------

    def start_send(self, topic: str, key: bytes | str | None = None, *, message: Any = None,
                   parent: Parent = None, root: bool = False,
                   attributes: Mapping[str, Any] | None = None) -> SendSpan:
        """Start ``send <topic>`` (PRODUCER) and make the headers to send with the message.

        ``root=True`` starts a new trace (the client: one trace per request), linked to the
        current span if there is one. ``message``: the Request/BinnedRequest/Result sent.
        """
        span_attributes = send_attributes(topic, key)
        if key is not None:
            span_attributes[REQUEST_ID] = key_text(key)
        if message is not None:
            span_attributes.update(message_attributes(message, self.model))
        span_attributes.update(attributes or {})
        links: list[Link] = []
        context = _context_of(parent)
        if root:
            current = trace.get_current_span(context).get_span_context()
            links = [Link(current)] if current.is_valid else []
            context = otel_context.Context()
        span = self.tracer.start_span(f"send {topic}", context=context, kind=SpanKind.PRODUCER,
                                      attributes=span_attributes, links=links)
        # Disabled, the no-op span carries its parent's context: the headers pass an
        # upstream trace on, so a process with tracing off does not cut the others' traces.
        return SendSpan(span, inject_headers(span))

    @contextmanager
    def send_span(self, topic: str, key: bytes | str | None = None, *, message: Any = None,
                  parent: Parent = None, root: bool = False,
                  attributes: Mapping[str, Any] | None = None) -> Iterator[SendSpan]:
        """``with telemetry.send_span(topic, key, message=req) as send:`` then produce with
        ``headers=send.headers``; the span ends (with the error, if any) on exit."""
        send = self.start_send(topic, key, message=message, parent=parent, root=root,
                               attributes=attributes)
        with trace.use_span(send.span, end_on_exit=True, record_exception=True,
                            set_status_on_exception=True):
            yield send

    # -- consumers -------------------------------------------------------------------

    def start_process(self, record: KafkaRecord, group: str | None, *, message: Any = None,
                      start_ns: int | None = None,
                      attributes: Mapping[str, Any] | None = None) -> Span:
        """Start ``process <topic>`` (CONSUMER) as a child of the context in the record's
        headers. End it yourself (``span.end()``) once everything the record caused is done.
        """
        span_attributes = record_attributes(record, group)
        if message is not None:
            span_attributes.update(message_attributes(message, self.model))
        span_attributes.update(attributes or {})
        return self.tracer.start_span(
            f"process {record.topic}", context=extract_context(record.headers),
            kind=SpanKind.CONSUMER, attributes=span_attributes, start_time=start_ns)

    @contextmanager
    def process_span(self, record: KafkaRecord, group: str | None, *, message: Any = None,
                     attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
        """``with telemetry.process_span(record, group) as span:`` the span is current inside,
        so child spans and sends nest under it."""
        span = self.start_process(record, group, message=message, attributes=attributes)
        with trace.use_span(span, end_on_exit=True, record_exception=True,
                            set_status_on_exception=True):
            yield span

    # -- children --------------------------------------------------------------------

    @contextmanager
    def child_span(self, name: str, *, parent: Parent = None, request_id: str | None = None,
                   attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
        """An INTERNAL child (validate, tokenize, predict, route…) of ``parent`` (or current)."""
        span_attributes = dict(attributes or {})
        if request_id is not None:
            span_attributes[REQUEST_ID] = request_id
        with self.tracer.start_as_current_span(
            name, context=_context_of(parent), attributes=span_attributes,
            record_exception=True, set_status_on_exception=True,
        ) as span:
            yield span

    def record_span(self, parent: Span, name: str, start_ns: int, end_ns: int, *,
                    request_id: str | None = None,
                    attributes: Mapping[str, Any] | None = None,
                    error: BaseException | str | None = None) -> None:
        """A finished child of ``parent`` from recorded unix-ns times (a stage measured once
        for a whole batch, or by the engine): nothing is traced while the work runs."""
        if not self.enabled:
            return
        span_attributes = dict(attributes or {})
        if request_id is not None:
            span_attributes[REQUEST_ID] = request_id
        span = self.tracer.start_span(name, context=trace.set_span_in_context(parent),
                                      start_time=start_ns, attributes=span_attributes)
        if error is not None:
            mark_error(span, error)
        span.end(end_time=max(start_ns, end_ns))

    def record_stages(self, parent: Span, timer: StageTimer,
                      request_id: str | None = None) -> None:
        """One child of ``parent`` per stage the timer measured."""
        for name, start_ns, end_ns in timer.stages:
            self.record_span(parent, name, start_ns, end_ns, request_id=request_id)

    def record_generation(self, parent: Span, timeline: GenerationTimeline,
                          request_id: str | None = None) -> None:
        """Emit queue wait, prefill, kv insert and decode spans from recorded timestamps."""
        for name, start_ns, end_ns, extra in timeline.stages():
            self.record_span(parent, name, start_ns, end_ns, request_id=request_id,
                             attributes=extra)

    def annotate(self, span: Span, message: Any = None,
                 attributes: Mapping[str, Any] | None = None) -> None:
        """Add a decoded message's attributes (and any others) to a span after it started."""
        if message is not None:
            span.set_attributes(message_attributes(message, self.model))
        if attributes:
            span.set_attributes(dict(attributes))

    # -- lifetime ----------------------------------------------------------------------

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        return self.provider.force_flush(int(timeout_s * 1000)) if self.provider else True

    def shutdown(self) -> None:
        """Export what is queued and stop the exporters (call once, at process exit)."""
        if self.provider is not None:
            self.provider.shutdown()


def setup_tracing(
    service_name: str,
    config: TracingConfig,
    *,
    bootstrap_servers: str | None = None,
    traces_topic: str = TopicNames().traces,
    model: str | None = None,
    resource_attributes: Mapping[str, Any] | None = None,
) -> Telemetry:
    """The process's Telemetry: a TracerProvider with resource ``service.name`` whose spans
    go, batched, to the traces topic (and to OTLP when configured). Call once per process
    (per service inside a process) and ``shutdown()`` at exit.
    """
    if not config.enabled:
        return Telemetry.disabled(service_name)
    resource = Resource.create({SERVICE_NAME: service_name, **(resource_attributes or {})})
    provider = TracerProvider(resource=resource)
    exporters = build_exporters(
        bootstrap_servers=bootstrap_servers if config.kafka_export else None,
        traces_topic=traces_topic, otlp_endpoint=config.otlp_endpoint,
        otlp_protocol=config.otlp_protocol,
    )
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(
            exporter, max_queue_size=config.max_queue_size,
            schedule_delay_millis=config.export_delay_ms,
            max_export_batch_size=config.max_export_batch))
    return Telemetry(service_name, provider, model=model)

