"""The worker's spans and metrics at the unit seam (stand-in consumer, producer and engine;
tests/integration/test_traces_pipeline.py runs them through the real broker and engine),
and the metrics ports `binbaton up` gives its workers."""

from __future__ import annotations

import asyncio

from aiokafka import ConsumerRecord, TopicPartition
from binbaton.schemas.codec import decode_result, encode
from binbaton.schemas.messages import BinnedRequest, Request
from binbaton.service.app.supervisor import worker_argv, worker_metrics_port
from binbaton.service.telemetry.metrics import Metrics
from binbaton.service.telemetry.tracing import WORKER_SERVICE, extract_context
from binbaton.workers.config import WorkerConfig
from binbaton.workers.consumer import BinConsumer
from binbaton.workers.engine.request import EngineError, GenerationOutput
from binbaton.workers.worker import Worker
from helpers.fakes import FakeConsumer, FakeProducer, consumer_record
from helpers.otlp import in_memory_telemetry
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

TP = TopicPartition("p.bin.1", 0)
UPSTREAM = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
T0 = 1_700_000_000.0  # engine timestamps (unix s) of the stand-in outputs


class Engine:
    """Answers each request with a prepared output."""

    def __init__(self, outputs: dict[str, GenerationOutput]) -> None:
        self.outputs = outputs

    async def start(self) -> None: ...

    async def stop(self, timeout: float | None = None) -> None: ...

    def submit(self, request):
        future = asyncio.get_running_loop().create_future()
        future.set_result(self.outputs[request.id])
        return future


def output(request_id: str, error: EngineError | None = None) -> GenerationOutput:
    if error is not None:
        return GenerationOutput(id=request_id, token_ids=(), text="", finish_reason="error",
                                prompt_tokens=2, error=error, bin=1, finished_at=T0 + 0.01)
    return GenerationOutput(
        id=request_id, token_ids=(5, 6, 7, 8), text="abcd", finish_reason="length",
        prompt_tokens=2, bin=1, admitted_at=T0 + 0.1, prefill_finished_at=T0 + 0.2,
        first_token_at=T0 + 0.21, inserted_at=T0 + 0.3, finished_at=T0 + 0.6)


def record(offset: int, request_id: str, value: bytes | None = None) -> ConsumerRecord:
    value = value or encode(BinnedRequest(
        request=Request(id=request_id, prompt_token_ids=[1, 2], max_tokens=4),
        prompt_token_ids=[1, 2], predicted_tokens=3, bin=1, received=int(T0 * 1000) - 50,
        classified=int(T0 * 1000) - 10))
    return consumer_record(TP, offset, request_id, value, [("traceparent", UPSTREAM)])


def traced_worker(outputs: dict[str, GenerationOutput], traced: bool = True):
    telemetry, exporter = in_memory_telemetry(WORKER_SERVICE, model="tiny", traced=traced)
    metrics = Metrics(model="tiny")
    worker = Worker(WorkerConfig(bins=(1,), topic_prefix="p"), kafka=None,
                    engine=Engine(outputs), telemetry=telemetry, metrics=metrics)
    bin_consumer = BinConsumer(worker, 1, FakeConsumer({TP}))
    worker._producer = FakeProducer()
    worker._consumers.append(bin_consumer)
    return worker, bin_consumer, exporter, metrics


async def finish(worker: Worker) -> None:
    while worker._tasks:
        await asyncio.gather(*worker._tasks)


async def test_a_served_record_makes_a_process_span_with_stages_and_a_send_span():
    worker, bin_consumer, exporter, metrics = traced_worker({"a": output("a")})
    worker._take(bin_consumer, {TP: [record(7, "a")]})
    assert metrics.registry.get_sample_value("binbaton_queue_depth", {"bin": "1"}) == 1
    await finish(worker)

    spans = {s.name: s for s in exporter.get_finished_spans()}
    process = spans["process p.bin.1"]
    assert process.kind == SpanKind.CONSUMER
    upstream = trace.get_current_span(extract_context([("traceparent", UPSTREAM)]))
    assert process.parent.span_id == upstream.get_span_context().span_id
    assert process.context.trace_id == upstream.get_span_context().trace_id
    attributes = process.attributes
    assert attributes["messaging.consumer.group.name"] == "p.worker.bin-1"
    assert attributes["messaging.kafka.offset"] == 7
    assert attributes["messaging.kafka.message.key"] == "a"
    assert attributes["binbaton.request.id"] == "a"
    assert attributes["binbaton.bin"] == 1 and attributes["binbaton.predicted_tokens"] == 3
    assert attributes["gen_ai.request.max_tokens"] == 4
    assert attributes["gen_ai.request.model"] == "tiny"
    assert attributes["gen_ai.usage.output_tokens"] == 4
    assert attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert process.status.status_code == StatusCode.UNSET

    def interval(name: str) -> tuple[float, float]:
        return spans[name].start_time / 1e9 - T0, spans[name].end_time / 1e9 - T0

    assert round(interval("prefill")[0], 3) == 0.1 and round(interval("prefill")[1], 3) == 0.2
    assert [round(t, 3) for t in interval("kv insert")] == [0.2, 0.3]
    assert [round(t, 3) for t in interval("decode")] == [0.3, 0.6]
    assert spans["decode"].attributes["gen_ai.usage.output_tokens"] == 4
    for name in ("queue wait", "prefill", "kv insert", "decode", "send p.results"):
        assert spans[name].parent.span_id == process.context.span_id, name
        assert spans[name].attributes["binbaton.request.id"] == "a"

    send = spans["send p.results"]
    assert send.kind == SpanKind.PRODUCER
    assert send.attributes["messaging.kafka.offset"] == 1  # recorded from the ack
    (topic, value, _, headers), = worker._producer.sent
    assert topic == "p.results" and decode_result(value).status == "ok"
    sent_context = trace.get_current_span(extract_context(headers)).get_span_context()
    assert sent_context.span_id == send.context.span_id  # the result carries the send span

    sample = metrics.registry.get_sample_value
    assert sample("binbaton_requests_total", {"stage": "worker", "status": "ok"}) == 1
    assert sample("gen_ai_server_time_to_first_token_seconds_count",
                  {"gen_ai_request_model": "tiny", "bin": "1"}) == 1
    assert sample("binbaton_output_tokens_total", {"bin": "1"}) == 4
    assert sample("binbaton_predictor_error_tokens_sum", {"bin": "1"}) == 1
    assert sample("binbaton_queue_depth", {"bin": "1"}) == 0


async def test_an_engine_error_marks_the_span_and_dead_letters_under_its_own_send_span():
    error = EngineError("too_long", "prompt + max_tokens exceed the context")
    worker, bin_consumer, exporter, metrics = traced_worker({"b": output("b", error)})
    worker._take(bin_consumer, {TP: [record(3, "b")]})
    await finish(worker)

    spans = {s.name: s for s in exporter.get_finished_spans()}
    process = spans["process p.bin.1"]
    assert process.status.status_code == StatusCode.ERROR
    assert process.attributes["error.type"] == "too_long"
    assert {"queue wait", "send p.results", "send p.dlq"} <= spans.keys()
    assert "prefill" not in spans  # never admitted
    assert spans["send p.dlq"].parent.span_id == process.context.span_id
    assert metrics.registry.get_sample_value(
        "binbaton_requests_total", {"stage": "worker", "status": "error"}) == 1
    assert metrics.registry.get_sample_value(
        "binbaton_request_errors_total", {"stage": "worker", "code": "too_long"}) == 1


async def test_an_undecodable_record_is_an_error_span_and_counted():
    worker, bin_consumer, exporter, metrics = traced_worker({})
    bad = record(4, "c", value=b"{not json")
    worker._take(bin_consumer, {TP: [bad]})
    await finish(worker)
    (process,) = [s for s in exporter.get_finished_spans() if s.name == "process p.bin.1"]
    assert process.status.status_code == StatusCode.ERROR
    assert metrics.registry.get_sample_value(
        "binbaton_requests_total", {"stage": "worker", "status": "error"}) == 1


async def test_tracing_off_passes_the_upstream_headers_on_and_still_counts():
    worker, bin_consumer, exporter, metrics = traced_worker({"d": output("d")}, traced=False)
    worker._take(bin_consumer, {TP: [record(0, "d")]})
    await finish(worker)
    assert exporter.get_finished_spans() == ()
    (_, _, _, headers), = worker._producer.sent
    assert headers == [("traceparent", UPSTREAM)]
    assert metrics.registry.get_sample_value(
        "binbaton_requests_total", {"stage": "worker", "status": "ok"}) == 1


def test_up_gives_every_worker_its_own_metrics_port_or_none():
    assert [worker_metrics_port(9400, i) for i in range(3)] == [9401, 9402, 9403]
    assert worker_metrics_port(0, 1) == 0 and worker_metrics_port(None, 0) == 0
    values = {"model": "m", "metrics_port": 9400, "topic_prefix": "binbaton"}
    argv = worker_argv(values, "127.0.0.1:9092", (0,), "cpu", 1)
    assert argv[argv.index("--metrics-port") + 1] == "9402"
    argv = worker_argv({"model": "m", "metrics_port": 0}, "127.0.0.1:9092", (0,), "cpu", 0)
    assert argv[argv.index("--metrics-port") + 1] == "0"  # explicit: $BINBATON_METRICS_PORT
    # set for `up` does not leak into the workers
