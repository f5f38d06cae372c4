"""Span export: OTLP protobuf to the traces topic, and OTLP gRPC/HTTP when configured.

The Kafka exporter writes ``ExportTraceServiceRequest`` messages (the Collector's
``otlp_proto`` encoding, which Jaeger's Kafka receiver reads), one message per trace id per
batch, keyed by the trace id in hex. It runs on the BatchSpanProcessor's thread, so it owns
a private asyncio loop in its own thread with one aiokafka producer; that producer is not
instrumented and creates no spans. No idempotence, no transactions (the embedded broker
has neither).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

from aiokafka import AIOKafkaProducer
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import format_trace_id

log = logging.getLogger(__name__)

T = TypeVar("T")
OtlpProtocol = Literal["grpc", "http/protobuf"]

MAX_SPANS_PER_MESSAGE = 256  # keeps one message well under Kafka's 1 MB default limit


def trace_messages(spans: Sequence[ReadableSpan]) -> list[tuple[bytes, bytes]]:
    """(key, value) Kafka messages: per trace id, its spans as a serialized
    ExportTraceServiceRequest; key = the 32-hex-digit trace id."""
    by_trace: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        if span.context is not None:
            by_trace.setdefault(span.context.trace_id, []).append(span)
    messages = []
    for trace_id, group in by_trace.items():
        key = format_trace_id(trace_id).encode("ascii")
        for start in range(0, len(group), MAX_SPANS_PER_MESSAGE):
            chunk = group[start:start + MAX_SPANS_PER_MESSAGE]
            messages.append((key, encode_spans(chunk).SerializeToString()))
    return messages


class LoopThread:
    """An asyncio loop running in its own daemon thread; ``run`` blocks on a coroutine."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, make: Callable[[], Awaitable[T]], timeout_s: float) -> T:
        async def call() -> T:
            return await make()

        future = asyncio.run_coroutine_threadsafe(call(), self.loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self.loop.close()


def default_producer(bootstrap_servers: str, client_id: str) -> Any:
    """An aiokafka producer for span batches (created on the exporter's own loop)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, client_id=client_id, acks=1,
        enable_idempotence=False, linger_ms=20, max_request_size=4 << 20,
    )


class KafkaSpanExporter(SpanExporter):
    """Batched OTLP protobuf spans to a Kafka topic, keyed by trace id.

    ``producer_factory(bootstrap_servers, client_id)`` returns an unstarted aiokafka-like
    producer (``start``, ``send`` -> awaitable ack, ``stop``); it is called on the private
    loop. The producer starts on the first export, so a broker that is not up yet only
    fails that export, and the next one tries again.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        client_id: str = "binbaton-traces",
        timeout_s: float = 10.0,
        producer_factory: Callable[[str, str], Any] = default_producer,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.client_id = client_id
        self.timeout_s = timeout_s
        self._producer_factory = producer_factory
        self._producer: Any = None
        self._loop = LoopThread(name=f"{client_id}-loop")
        self._lock = threading.Lock()  # export and shutdown may come from different threads
        self._closed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        messages = trace_messages(spans)
        with self._lock:
            if self._closed:
                return SpanExportResult.FAILURE
            if not messages:
                return SpanExportResult.SUCCESS
            try:
                self._loop.run(lambda: self._send(messages), self.timeout_s)
            except Exception as exc:
                log.warning("exporting %d spans to %s failed: %r", len(spans), self.topic, exc)
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    async def _send(self, messages: list[tuple[bytes, bytes]]) -> None:
        producer = await self._started_producer()
        acks = [await producer.send(self.topic, value, key=key) for key, value in messages]
        await asyncio.gather(*acks)

    async def _started_producer(self) -> Any:
        if self._producer is None:
            producer = self._producer_factory(self.bootstrap_servers, self.client_id)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # export() returns only after the broker acknowledged

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            producer, self._producer = self._producer, None
            if producer is not None:
                try:
                    self._loop.run(producer.stop, self.timeout_s)
                except Exception as exc:
                    log.warning("stopping the traces producer failed: %r", exc)
            self._loop.stop()


def otlp_exporter(endpoint: str | None, protocol: OtlpProtocol | None) -> SpanExporter:
    """The standard OTLP exporter; with ``endpoint=None`` it reads the OTEL_* variables."""
    protocol = protocol or _env_protocol()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    if endpoint is not None and not endpoint.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"  # a base URL, as in the OTEL_* variable
    return HttpSpanExporter(endpoint=endpoint)


def _env_protocol() -> OtlpProtocol:
    """OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL; the OTLP spec's default is http/protobuf."""
    value = (os.environ.get(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)
             or os.environ.get(OTEL_EXPORTER_OTLP_PROTOCOL) or "http/protobuf")
    if value not in ("grpc", "http/protobuf"):
        raise ValueError(f"unsupported OTLP protocol {value!r} (use grpc or http/protobuf)")
    return value  # type: ignore[return-value]


def otlp_configured_in_environment() -> bool:
    return bool(os.environ.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
                or os.environ.get(OTEL_EXPORTER_OTLP_ENDPOINT))


def build_exporters(
    *,
    bootstrap_servers: str | None,
    traces_topic: str,
    otlp_endpoint: str | None = None,
    otlp_protocol: OtlpProtocol | None = None,
) -> list[SpanExporter]:
    """Kafka export when bootstrap servers are given; OTLP when an endpoint is configured
    (argument, or the standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT variable)."""
    exporters: list[SpanExporter] = []
    if bootstrap_servers:
        exporters.append(KafkaSpanExporter(bootstrap_servers, traces_topic))
    if otlp_endpoint or otlp_configured_in_environment():
        exporters.append(otlp_exporter(otlp_endpoint, otlp_protocol))
    return exporters
