"""Spans as the traces topic carries them (OTLP ``ExportTraceServiceRequest``), and spans
kept in memory."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from binbaton.service.telemetry.tracing import REQUEST_ID, Telemetry
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@dataclass(frozen=True)
class SpanRow:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    service: str
    attributes: dict[str, Any]
    error: bool

    @property
    def request_id(self) -> str | None:
        return self.attributes.get(REQUEST_ID)


def decode_rows(value: bytes) -> list[SpanRow]:
    """One traces-topic message -> its spans."""
    rows = []
    for resource in ExportTraceServiceRequest.FromString(value).resource_spans:
        service = {a.key: a.value.string_value
                   for a in resource.resource.attributes}["service.name"]
        for scope in resource.scope_spans:
            for span in scope.spans:
                attributes = {a.key: getattr(a.value, a.value.WhichOneof("value"))
                              for a in span.attributes}
                rows.append(SpanRow(span.trace_id.hex(), span.span_id.hex(),
                                    span.parent_span_id.hex(), span.name, service, attributes,
                                    span.status.code == Status.STATUS_CODE_ERROR))
    return rows


async def read_spans(bootstrap: str, topic: str, until: Callable[[list[SpanRow]], bool],
                     timeout_s: float = 20.0) -> tuple[list[SpanRow], list[str]]:
    """The spans on partition 0 of a traces topic (until ``until(rows)``), and the keys of
    the messages that carried them."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    rows: list[SpanRow] = []
    keys: list[str] = []
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        deadline = time.monotonic() + timeout_s
        while not until(rows) and time.monotonic() < deadline:
            batch = await consumer.getmany(partition, timeout_ms=300)
            for record in batch.get(partition, []):
                keys.append(record.key.decode())
                rows += decode_rows(record.value)
    finally:
        await consumer.stop()
    return rows, keys


def in_memory_telemetry(service: str, model: str | None = "tiny-llama",
                        traced: bool = True) -> tuple[Telemetry, InMemorySpanExporter]:
    """A process's Telemetry whose finished spans stay in the returned exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Telemetry(service, provider if traced else None, model=model), exporter
