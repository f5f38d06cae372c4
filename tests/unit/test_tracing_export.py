"""OTLP export when an endpoint is configured (a local OTLP/HTTP receiver), and the
per-trace Kafka message split, without a broker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from binbaton.service.telemetry import trace_export
from binbaton.service.telemetry.trace_export import build_exporters, trace_messages
from binbaton.service.telemetry.tracing import WORKER_SERVICE, TracingConfig, setup_tracing
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

OTLP_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                  "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")


class Receiver(BaseHTTPRequestHandler):
    posts: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.posts.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in OTLP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    Receiver.posts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def exported_names() -> set[str]:
    names = set()
    for path, body in Receiver.posts:
        assert path == "/v1/traces"
        request = ExportTraceServiceRequest.FromString(body)
        names |= {span.name for r in request.resource_spans for s in r.scope_spans
                  for span in s.spans}
    return names


def test_otlp_http_export_from_the_config(receiver: str) -> None:
    config = TracingConfig(kafka_export=False, otlp_endpoint=receiver,
                           otlp_protocol="http/protobuf")
    telemetry = setup_tracing(WORKER_SERVICE, config)
    telemetry.start_send("binbaton.results", "r1").end()
    assert telemetry.force_flush()
    telemetry.shutdown()
    assert exported_names() == {"send binbaton.results"}


def test_otlp_from_the_standard_environment(receiver: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_exporters(bootstrap_servers=None, traces_topic="t") == []
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    telemetry = setup_tracing(WORKER_SERVICE, TracingConfig(kafka_export=False))
    telemetry.start_send("binbaton.results", "r2").end()
    assert telemetry.force_flush()
    telemetry.shutdown()
    assert exported_names() == {"send binbaton.results"}

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    (exporter,) = build_exporters(bootstrap_servers=None, traces_topic="t")
    assert isinstance(exporter, GrpcExporter)
    exporter.shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match="unsupported OTLP protocol"):
        build_exporters(bootstrap_servers=None, traces_topic="t")


def test_kafka_and_otlp_together(receiver: str) -> None:
    exporters = build_exporters(bootstrap_servers="127.0.0.1:1", traces_topic="t",
                                otlp_endpoint=receiver, otlp_protocol="http/protobuf")
    try:
        assert [type(e) for e in exporters] == [trace_export.KafkaSpanExporter, HttpExporter]
    finally:
        for exporter in exporters:
            exporter.shutdown()


def test_messages_split_by_trace_and_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace_export, "MAX_SPANS_PER_MESSAGE", 2)
    telemetry = setup_tracing(WORKER_SERVICE, TracingConfig(kafka_export=False))
    local = InMemorySpanExporter()
    telemetry.provider.add_span_processor(SimpleSpanProcessor(local))
    for trace in range(2):
        root = telemetry.start_send("binbaton.requests", f"r{trace}", root=True)
        for _ in range(2):
            telemetry.start_send("binbaton.bin.0", f"r{trace}", parent=root.span).end()
        root.end()
    telemetry.shutdown()
    messages = trace_messages(local.get_finished_spans())
    assert len(messages) == 4  # 3 spans per trace, at most 2 per message
    for key, value in messages:
        request = ExportTraceServiceRequest.FromString(value)
        spans = [s for r in request.resource_spans for ss in r.scope_spans for s in ss.spans]
        assert 1 <= len(spans) <= 2
        assert {s.trace_id.hex() for s in spans} == {key.decode()}
    assert len({key for key, _ in messages}) == 2
