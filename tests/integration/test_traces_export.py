"""Spans exported to the traces topic through the real embedded broker, read back as OTLP."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from binbaton.service.kafka.broker import free_port
from binbaton.service.telemetry.trace_export import KafkaSpanExporter
from binbaton.service.telemetry.tracing import (
    CLASSIFIER_SERVICE,
    CLIENT_SERVICE,
    TracingConfig,
    setup_tracing,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


async def read_all(bootstrap: str, topic: str, expected_spans: int,
                   timeout_s: float = 20.0) -> list[tuple[str, ExportTraceServiceRequest]]:
    """(key, decoded value) of every message on partition 0 until ``expected_spans`` spans."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        messages: list[tuple[str, ExportTraceServiceRequest]] = []
        deadline = asyncio.get_running_loop().time() + timeout_s
        while count_spans(messages) < expected_spans:
            if asyncio.get_running_loop().time() > deadline:
                break
            batch = await consumer.getmany(partition, timeout_ms=500)
            for record in batch.get(partition, []):
                request = ExportTraceServiceRequest.FromString(record.value)
                messages.append((record.key.decode(), request))
        return messages
    finally:
        await consumer.stop()


def count_spans(messages: list[tuple[str, ExportTraceServiceRequest]]) -> int:
    return sum(len(scope.spans) for _, request in messages for resource in request.resource_spans
               for scope in resource.scope_spans)


async def test_spans_reach_the_traces_topic_as_otlp_keyed_by_trace_id(
    broker: str, unique_prefix: str,
    create_topics: Callable[[dict[str, int]], Awaitable[dict[str, int]]],
) -> None:
    topic = f"{unique_prefix}.traces"
    await create_topics({topic: 1})
    config = TracingConfig(export_delay_ms=50)
    client = setup_tracing(CLIENT_SERVICE, config, bootstrap_servers=broker, traces_topic=topic)
    classifier = setup_tracing(CLASSIFIER_SERVICE, config, bootstrap_servers=broker,
                               traces_topic=topic)
    local = InMemorySpanExporter()  # every span the client's provider saw
    client.provider.add_span_processor(SimpleSpanProcessor(local))

    expected: dict[str, dict[bytes, tuple[str, bytes]]] = {}  # trace -> span -> (name, parent)
    for i in range(5):
        request_id = f"req-{i}"
        send = client.start_send("binbaton.requests", request_id, root=True)
        send.end()
        record = type("Record", (), {"topic": "binbaton.requests", "partition": 0, "offset": i,
                                     "key": request_id.encode(), "headers": send.headers})()
        with classifier.process_span(record, "binbaton.classifier") as process, \
                classifier.child_span("validate", request_id=request_id) as validate:
            pass
        trace_hex = f"{send.span.get_span_context().trace_id:032x}"
        ids = {name: span.get_span_context().span_id.to_bytes(8, "big")
               for name, span in [("send", send.span), ("process", process),
                                  ("validate", validate)]}
        expected[trace_hex] = {
            ids["send"]: ("send binbaton.requests", b""),
            ids["process"]: ("process binbaton.requests", ids["send"]),
            ids["validate"]: ("validate", ids["process"]),
        }
    assert client.force_flush() and classifier.force_flush()

    messages = await read_all(broker, topic, expected_spans=15)
    client.shutdown()
    classifier.shutdown()

    seen: dict[str, dict[bytes, tuple[str, bytes]]] = {}
    services: dict[str, str] = {}
    for key, request in messages:
        for resource in request.resource_spans:
            service = next(a.value.string_value for a in resource.resource.attributes
                           if a.key == "service.name")
            for scope in resource.scope_spans:
                for span in scope.spans:
                    assert span.trace_id.hex() == key  # the message key is its trace id
                    seen.setdefault(key, {})[span.span_id] = (span.name, span.parent_span_id)
                    services[span.name] = service
    assert seen == expected  # every span, once, in its trace, with its parent
    assert services == {"send binbaton.requests": CLIENT_SERVICE,
                        "process binbaton.requests": CLASSIFIER_SERVICE,
                        "validate": CLASSIFIER_SERVICE}
    # The exporter's own producer made no spans: the client's provider saw only the sends.
    assert {s.name for s in local.get_finished_spans()} == {"send binbaton.requests"}


def test_export_fails_fast_without_a_broker() -> None:
    exporter = KafkaSpanExporter(f"127.0.0.1:{free_port()}", "binbaton.traces", timeout_s=5)
    telemetry = setup_tracing(CLIENT_SERVICE, TracingConfig(kafka_export=False))
    telemetry.start_send("binbaton.requests", "r", root=True).end()
    local = InMemorySpanExporter()
    telemetry.provider.add_span_processor(SimpleSpanProcessor(local))
    telemetry.start_send("binbaton.requests", "r", root=True).end()
    try:
        assert exporter.export(local.get_finished_spans()) == SpanExportResult.FAILURE
        assert exporter.export([]) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
        telemetry.shutdown()
    assert exporter.export(local.get_finished_spans()) == SpanExportResult.FAILURE  # closed
