"""The tracing adapter: attributes, W3C headers, hop spans and spans made after the fact."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest
from binbaton.schemas.messages import BinnedRequest, ErrorInfo, Request, Result, Usage
from binbaton.service.telemetry import tracing
from binbaton.service.telemetry.tracing import (
    CLASSIFIER_SERVICE,
    CLIENT_SERVICE,
    WORKER_SERVICE,
    GenerationTimeline,
    TracingConfig,
    extract_context,
    inject_headers,
    setup_tracing,
)
from binbaton.workers.engine.request import GenerationOutput
from helpers.otlp import in_memory_telemetry as in_memory
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes
from opentelemetry.trace import SpanKind, StatusCode


@dataclass
class Record:
    """The fields of aiokafka's ConsumerRecord the adapter reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None = b"{}"
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def request(**overrides: object) -> Request:
    fields = {"id": "req-1", "prompt": "hello", "max_tokens": 32, "temperature": 0.7,
              "top_p": 0.9, "seed": 5, "stop": ["\n"]}
    fields.update(overrides)
    return Request(**fields)  # type: ignore[arg-type]


def binned(req: Request) -> BinnedRequest:
    return BinnedRequest(request=req, prompt_token_ids=[1, 2, 3, 4], predicted_tokens=20,
                         bin=1, received=1_000, classified=1_002)


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def test_genai_names_match_the_semconv_package() -> None:
    for name in dir(tracing):
        if name.startswith("GEN_AI_") and hasattr(gen_ai_attributes, name):
            assert getattr(tracing, name) == getattr(gen_ai_attributes, name), name


def test_record_attributes_follow_the_kafka_conventions() -> None:
    record = Record("binbaton.bin.2", partition=1, offset=42, key=b"req-9", value=b"x" * 10)
    attributes = tracing.record_attributes(record, "binbaton.worker.bin-2")
    assert attributes == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "binbaton.bin.2",
        "messaging.destination.partition.id": "1",
        "messaging.kafka.offset": 42,
        "messaging.message.id": "binbaton.bin.2/1/42",
        "messaging.consumer.group.name": "binbaton.worker.bin-2",
        "messaging.kafka.message.key": "req-9",
        "messaging.message.body.size": 10,
        "binbaton.request.id": "req-9",
    }
    keyless = tracing.record_attributes(Record("t", 0, 0, key=None), None)
    assert "messaging.kafka.message.key" not in keyless  # a null key MUST NOT be set
    assert "binbaton.request.id" not in keyless
    assert "messaging.consumer.group.name" not in keyless


def test_request_binned_and_result_attributes() -> None:
    req = request()
    attributes = tracing.message_attributes(binned(req), model="m")
    assert attributes["binbaton.request.id"] == "req-1"
    assert attributes["gen_ai.operation.name"] == "text_completion"
    assert attributes["gen_ai.request.model"] == "m"
    assert attributes["gen_ai.request.max_tokens"] == 32
    assert attributes["gen_ai.request.temperature"] == pytest.approx(0.7)
    assert attributes["gen_ai.request.top_p"] == pytest.approx(0.9)
    assert attributes["gen_ai.request.seed"] == 5
    assert attributes["gen_ai.request.stop_sequences"] == ["\n"]
    assert attributes["gen_ai.usage.input_tokens"] == 4
    assert attributes["binbaton.bin"] == 1
    assert attributes["binbaton.predicted_tokens"] == 20

    result = Result(id="req-1", status="ok", finish_reason="length",
                    usage=Usage(prompt_tokens=4, completion_tokens=32), bin=1,
                    predicted_tokens=20, worker="w0")
    attributes = tracing.message_attributes(result)
    assert attributes["gen_ai.response.finish_reasons"] == ["length"]
    assert attributes["gen_ai.usage.output_tokens"] == 32
    assert attributes["gen_ai.usage.input_tokens"] == 4
    assert attributes["binbaton.status"] == "ok"
    assert attributes["binbaton.worker"] == "w0"
    failed = Result(id="r", status="error", error=ErrorInfo("too_long", "prompt too long"))
    assert tracing.message_attributes(failed)["error.type"] == "too_long"


def test_headers_round_trip_the_w3c_context() -> None:
    telemetry, _ = in_memory(CLIENT_SERVICE)
    with telemetry.tracer.start_as_current_span("parent") as span:
        headers = inject_headers()
    names = [name for name, _ in headers]
    assert "traceparent" in names
    assert all(isinstance(value, bytes) for _, value in headers)
    extracted = tracing.trace.get_current_span(extract_context(headers)).get_span_context()
    assert extracted.trace_id == span.get_span_context().trace_id
    assert extracted.span_id == span.get_span_context().span_id
    assert extracted.is_remote
    # No headers, or garbage: an empty context, never an error.
    for bad in (None, [], [("traceparent", b"not-a-traceparent")]):
        context = tracing.trace.get_current_span(extract_context(bad)).get_span_context()
        assert not context.is_valid


def test_one_trace_across_client_classifier_and_worker() -> None:
    client, client_spans = in_memory(CLIENT_SERVICE)
    classifier, classifier_spans = in_memory(CLASSIFIER_SERVICE)
    worker, worker_spans = in_memory(WORKER_SERVICE)
    req = request()

    # client: a batch span; each request's send starts its own trace, linked to the batch.
    with client.tracer.start_as_current_span("produce") as produce:
        send = client.start_send("binbaton.requests", req.id, message=req, root=True)
        send.end()
    on_requests = Record("binbaton.requests", 0, 7, key=b"req-1", headers=send.headers)

    # classifier: process (children validate … route), then send to the bin.
    with classifier.process_span(on_requests, "binbaton.classifier") as process:
        with classifier.child_span(tracing.VALIDATE, request_id=req.id):
            pass
        with classifier.child_span(tracing.TOKENIZE, request_id=req.id):
            pass
        with classifier.child_span(tracing.PREDICT, request_id=req.id) as predict:
            predict.set_attribute(tracing.PREDICTED_TOKENS, 20)
        with classifier.child_span(tracing.ROUTE, request_id=req.id):
            pass
        classifier.annotate(process, req)
        with classifier.send_span("binbaton.bin.1", req.id, message=binned(req)) as to_bin:
            to_bin.acknowledged(type("Metadata", (), {"partition": 1, "offset": 3})())
    on_bin = Record("binbaton.bin.1", 1, 3, key=b"req-1", headers=to_bin.headers)

    # worker: process span open while the engine runs; stages afterwards; then the result.
    t0 = 1_700_000_000.0
    work = worker.start_process(on_bin, "binbaton.worker.bin-1", message=binned(req),
                                start_ns=tracing.seconds_to_ns(t0))
    output = GenerationOutput(id="req-1", token_ids=(5, 6, 7), text="abc", finish_reason="stop",
                              prompt_tokens=4, bin=1, admitted_at=t0 + 0.5,
                              first_token_at=t0 + 0.75, finished_at=t0 + 1.0)
    worker.record_generation(work, GenerationTimeline.from_output(output, received_at=t0),
                             request_id=req.id)
    result = Result(id="req-1", status="ok", finish_reason="stop",
                    usage=Usage(prompt_tokens=4, completion_tokens=3), bin=1)
    worker.start_send("binbaton.results", req.id, message=result, parent=work).end()
    work.end()

    spans = client_spans.get_finished_spans() + classifier_spans.get_finished_spans() \
        + worker_spans.get_finished_spans()
    named = by_name(spans)
    root = named["send binbaton.requests"]
    request_spans = [s for s in spans if s.name != "produce"]
    assert {s.context.trace_id for s in request_spans} == {root.context.trace_id}
    assert root.parent is None
    assert [link.context.span_id for link in root.links] == [produce.get_span_context().span_id]
    assert root.context.trace_id != produce.get_span_context().trace_id

    def parent_of(name: str) -> str:
        parent_id = named[name].parent.span_id  # type: ignore[union-attr]
        return next(s.name for s in spans if s.context.span_id == parent_id)

    expected_parents = {
        "process binbaton.requests": "send binbaton.requests",
        "validate": "process binbaton.requests",
        "tokenize": "process binbaton.requests",
        "predict": "process binbaton.requests",
        "route": "process binbaton.requests",
        "send binbaton.bin.1": "process binbaton.requests",
        "process binbaton.bin.1": "send binbaton.bin.1",
        "queue wait": "process binbaton.bin.1",
        "prefill": "process binbaton.bin.1",
        "kv insert": "process binbaton.bin.1",
        "decode": "process binbaton.bin.1",
        "send binbaton.results": "process binbaton.bin.1",
    }
    for name, parent in expected_parents.items():
        assert parent_of(name) == parent, name
    assert named["process binbaton.requests"].parent.is_remote  # type: ignore[union-attr]

    for span in request_spans:
        assert span.attributes["binbaton.request.id"] == "req-1", span.name
    services = {s.name: s.resource.attributes["service.name"] for s in request_spans}
    assert services["send binbaton.requests"] == CLIENT_SERVICE
    assert services["route"] == CLASSIFIER_SERVICE
    assert services["decode"] == WORKER_SERVICE
    kinds = {s.name: s.kind for s in request_spans}
    assert kinds["send binbaton.requests"] == SpanKind.PRODUCER
    assert kinds["process binbaton.bin.1"] == SpanKind.CONSUMER
    assert kinds["prefill"] == SpanKind.INTERNAL

    to_bin_span = named["send binbaton.bin.1"]
    assert to_bin_span.attributes["messaging.destination.partition.id"] == "1"
    assert to_bin_span.attributes["messaging.kafka.offset"] == 3
    assert to_bin_span.attributes["binbaton.bin"] == 1
    assert named["process binbaton.requests"].attributes["gen_ai.request.model"] == "tiny-llama"
    assert named["predict"].attributes["binbaton.predicted_tokens"] == 20
    assert named["send binbaton.results"].attributes["gen_ai.usage.output_tokens"] == 3
    assert named["decode"].attributes["gen_ai.usage.output_tokens"] == 3

    # The stage spans carry the engine's own times, not the time they were created.
    ns = tracing.seconds_to_ns
    assert (named["queue wait"].start_time, named["queue wait"].end_time) == (ns(t0), ns(t0 + 0.5))
    assert (named["prefill"].start_time, named["prefill"].end_time) == \
        (ns(t0 + 0.5), ns(t0 + 0.75))
    assert named["prefill"].attributes["binbaton.timing.measured"] is False
    assert named["kv insert"].start_time == named["kv insert"].end_time == ns(t0 + 0.75)
    assert (named["decode"].start_time, named["decode"].end_time) == (ns(t0 + 0.75), ns(t0 + 1))
    assert named["process binbaton.bin.1"].start_time == ns(t0)


def test_timeline_uses_the_engine_insertion_times_when_given() -> None:
    timeline = GenerationTimeline(received_ns=0, admitted_ns=10, prefilled_ns=20, inserted_ns=25,
                                  first_token_ns=20, finished_ns=100, output_tokens=8)
    stages = [(name, start, end) for name, start, end, _ in timeline.stages()]
    assert stages == [("queue wait", 0, 10), ("prefill", 10, 20), ("kv insert", 20, 25),
                      ("decode", 25, 100)]
    assert all(extra.get("binbaton.timing.measured", True) for *_, extra in timeline.stages())


def test_timeline_of_a_request_that_never_ran() -> None:
    output = GenerationOutput(id="r", token_ids=(), text="", finish_reason="error",
                              prompt_tokens=9000, finished_at=12.0)
    timeline = GenerationTimeline.from_output(output, received_at=11.0)
    assert [(n, s, e) for n, s, e, _ in timeline.stages()] == \
        [("queue wait", 11_000_000_000, 12_000_000_000)]


def test_errors_mark_the_span() -> None:
    telemetry, exporter = in_memory(CLASSIFIER_SERVICE)
    record = Record("binbaton.requests", 0, 1, key=None)
    with pytest.raises(ValueError), telemetry.process_span(record, "g"):
        raise ValueError("bad json")
    send = telemetry.start_send("binbaton.dlq")
    send.end(error=RuntimeError("broker down"))
    process, dlq = exporter.get_finished_spans()
    assert process.status.status_code == StatusCode.ERROR
    assert dlq.status.status_code == StatusCode.ERROR
    assert dlq.attributes["error.type"] == "RuntimeError"


def test_disabled_tracing_is_inert() -> None:
    telemetry = setup_tracing(WORKER_SERVICE, TracingConfig(enabled=False),
                              bootstrap_servers="127.0.0.1:1")
    assert not telemetry.enabled
    upstream, _ = in_memory(CLASSIFIER_SERVICE)
    sent = upstream.start_send("binbaton.bin.0", "r")
    sent.end()
    record = Record("binbaton.bin.0", 0, 0, key=b"r", headers=sent.headers)
    with telemetry.process_span(record, "g") as span, telemetry.child_span("validate"):
        send = telemetry.start_send("binbaton.results", "r", parent=span)
        send.end()
    assert not span.is_recording()
    assert send.headers == sent.headers  # the upstream trace passes through untouched
    assert telemetry.start_send("binbaton.requests", "r", root=True).headers == []
    telemetry.record_generation(span, GenerationTimeline(received_ns=0, finished_ns=1))
    assert telemetry.force_flush()
    telemetry.shutdown()


def test_setup_tracing_sets_the_resource_and_exporters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    telemetry = setup_tracing(CLASSIFIER_SERVICE, TracingConfig(kafka_export=False))
    try:
        assert telemetry.enabled
        assert telemetry.provider.resource.attributes["service.name"] == CLASSIFIER_SERVICE
    finally:
        telemetry.shutdown()


def test_tracing_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="otlp_protocol"):
        TracingConfig(otlp_protocol="thrift")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="export_delay_ms"):
        TracingConfig(export_delay_ms=0)
    with pytest.raises(ValueError, match="max_export_batch"):
        TracingConfig(max_export_batch=10, max_queue_size=5)



def test_stage_timer_spans_cover_the_measured_work() -> None:
    telemetry, exporter = in_memory(CLASSIFIER_SERVICE)
    timer = tracing.StageTimer()
    with timer.measure(tracing.TOKENIZE):
        time.sleep(0.01)
    with pytest.raises(KeyError), timer.measure(tracing.PREDICT):
        raise KeyError("predictor failed")  # a failed stage is still timed
    parents = [telemetry.start_process(Record("t", 0, i, key=f"r{i}".encode()), "g")
               for i in range(2)]
    for i, parent in enumerate(parents):
        telemetry.record_stages(parent, timer, request_id=f"r{i}")
        parent.end()
    tokenize = [s for s in exporter.get_finished_spans() if s.name == "tokenize"]
    assert len(tokenize) == 2
    assert all(s.end_time - s.start_time >= 10_000_000 for s in tokenize)
    assert [s.name for s in exporter.get_finished_spans()].count("predict") == 2


def test_batched_stages_become_children_of_each_request() -> None:
    telemetry, exporter = in_memory(CLASSIFIER_SERVICE)
    records = [Record("binbaton.requests", 0, i, key=f"r{i}".encode()) for i in range(3)]
    spans = [telemetry.start_process(r, "g", start_ns=1_000) for r in records]
    # One tokenizer call and one predictor call for the whole batch, timed once.
    for record, span in zip(records, spans, strict=True):
        request_id = record.key.decode()
        telemetry.record_span(span, tracing.TOKENIZE, 1_100, 1_400, request_id=request_id)
        telemetry.record_span(span, tracing.PREDICT, 1_400, 1_500, request_id=request_id,
                              attributes={tracing.PREDICTED_TOKENS: 7})
        span.end()
    finished = exporter.get_finished_spans()
    assert len(finished) == 9
    for span in spans:
        children = [s for s in finished if s.parent and s.parent.span_id == span.context.span_id]
        assert [(c.name, c.start_time, c.end_time) for c in children] == \
            [("tokenize", 1_100, 1_400), ("predict", 1_400, 1_500)]
        assert {c.attributes["binbaton.request.id"] for c in children} == \
            {span.attributes["binbaton.request.id"]}


async def test_send_span_ends_when_the_broker_acknowledges() -> None:
    telemetry, exporter = in_memory(WORKER_SERVICE)
    loop = asyncio.get_running_loop()
    ok, failed = loop.create_future(), loop.create_future()
    sent = telemetry.start_send("binbaton.results", "a").end_when(ok)
    telemetry.start_send("binbaton.results", "b").end_when(failed)
    assert exporter.get_finished_spans() == ()  # still in flight
    ok.set_result(type("Metadata", (), {"partition": 2, "offset": 41})())
    failed.set_exception(RuntimeError("broker gone"))
    await asyncio.sleep(0)  # done callbacks run on the loop
    assert sent is ok
    spans = {s.attributes["binbaton.request.id"]: s for s in exporter.get_finished_spans()}
    assert spans["a"].attributes["messaging.destination.partition.id"] == "2"
    assert spans["a"].attributes["messaging.kafka.offset"] == 41
    assert spans["a"].status.status_code == StatusCode.UNSET
    assert spans["b"].status.status_code == StatusCode.ERROR
    with pytest.raises(RuntimeError):
        failed.result()
