"""Must-show of issue 5, through the embedded broker with the real services in-process:
`binbaton produce`'s client code, the real Classifier and the real Worker (tiny checkpoint,
real engine), every process exporting OTLP protobuf to binbaton.traces with the Kafka
exporter. Each request's trace is rebuilt from that topic: one trace per request, spans of
the three services, parent links client send → classifier process → classifier send →
worker process → {queue wait, prefill, kv insert, decode, send results}. The classifier's
and the worker's Prometheus endpoints are scraped over HTTP before and after the run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from binbaton.schemas.messages import Request, Result
from binbaton.service.classifier.config import ClassifierConfig
from binbaton.service.classifier.service import run_classifier
from binbaton.service.kafka.broker import free_port
from binbaton.service.kafka.client import ResultFollower, produce, request_message
from binbaton.service.kafka.config import KafkaConfig
from binbaton.service.kafka.topics import TopicsConfig, create_service_topics
from binbaton.service.telemetry.metrics import Metrics, MetricsConfig
from binbaton.service.telemetry.tracing import (
    CLASSIFIER_SERVICE,
    CLIENT_SERVICE,
    WORKER_SERVICE,
    TracingConfig,
    setup_tracing,
)
from binbaton.workers.config import WorkerConfig
from binbaton.workers.engine.async_engine import AsyncEngine
from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.engine import Engine
from binbaton.workers.worker import serve
from helpers.otlp import SpanRow, read_spans
from helpers.prometheus import scrape, total

SERVED = 20  # requests the worker serves
TOO_LONG = 2  # requests the engine rejects (prompt + max_tokens over its 32-token context)
ENGINE_CONTEXT = 32


async def wait_scrape(port: int, ready, timeout_s: float = 10.0) -> dict:
    """Scrape until ``ready(samples)`` (results are counted right after their ack)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = await asyncio.to_thread(scrape, port)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.2)


def requests() -> list[Request]:
    words = ["the", "quick", "brown", "fox"]  # at most 5 prompt tokens
    served = [Request(id=f"r{i:02d}", prompt=" ".join(words[: 1 + i % 4]),
                      max_tokens=3 + (i % 3) * 6, ignore_eos=True) for i in range(SERVED)]
    too_long = [Request(id=f"long{i}", prompt="hello world", max_tokens=40, ignore_eos=True)
                for i in range(TOO_LONG)]
    return served + too_long


@pytest.mark.slow
async def test_one_trace_per_request_across_client_classifier_and_worker_and_metrics(
    broker: str, unique_prefix: str, tiny_llama_dir: Path
) -> None:
    kafka = KafkaConfig(bootstrap_servers=broker, session_timeout_ms=4000,
                        heartbeat_interval_ms=400)
    topics = TopicsConfig(prefix=unique_prefix, num_bins=2)
    await create_service_topics(broker, topics)
    tracing = TracingConfig(export_delay_ms=50)
    model = str(tiny_llama_dir)
    stop, classifier_started, worker_ready = asyncio.Event(), asyncio.Event(), asyncio.Event()

    classifier_port, worker_port = free_port(), free_port()
    classifier = asyncio.create_task(run_classifier(
        kafka, topics, ClassifierConfig(model=model, bin_edges=(8,), predictor="max_tokens",
                                         max_tokens_limit=48),
        stop, classifier_started, tracing_config=tracing,
        metrics_config=MetricsConfig(port=classifier_port, host="127.0.0.1")))

    telemetry = setup_tracing(WORKER_SERVICE, tracing, bootstrap_servers=broker,
                              traces_topic=topics.traces, model=model)
    metrics = Metrics(model=model)
    assert metrics.serve(MetricsConfig(port=worker_port, host="127.0.0.1")) == worker_port
    engine = AsyncEngine(Engine(EngineConfig(model=model, max_batch=8, kernel_backend="torch",
                                             max_model_len=ENGINE_CONTEXT)))
    worker_config = WorkerConfig(bins=(0, 1), topic_prefix=unique_prefix, worker_id="w0",
                                 commit_interval_s=0.2)
    worker = asyncio.create_task(serve(worker_config, engine, kafka, stop,
                                       on_ready=worker_ready.set, telemetry=telemetry,
                                       metrics=metrics))
    try:
        await asyncio.wait_for(asyncio.gather(classifier_started.wait(), worker_ready.wait()),
                               30)
        before = await asyncio.to_thread(scrape, worker_port)
        assert total(before, "binbaton_requests_total", stage="worker") == 0

        sent = requests()
        await produce(kafka, topics.requests, [request_message(r) for r in sent],
                      tracing_config=tracing)
        results: dict[str, Result] = {}
        async with ResultFollower(kafka, topics.results) as follower:
            deadline = time.monotonic() + 30
            while len(results) < len(sent) and time.monotonic() < deadline:
                results.update((r.id, r) for r in await follower.poll())
        assert len(results) == len(sent)
        ok = [r for r in results.values() if r.status == "ok"]
        assert len(ok) == SERVED
        assert {r.id for r in results.values() if r.status == "error"} == \
            {f"long{i}" for i in range(TOO_LONG)}

        # The worker's endpoint during the run: every result counted, the queues empty.
        after = await wait_scrape(worker_port, lambda s: (
            total(s, "binbaton_requests_total", stage="worker") == len(sent)
            and any(name == "binbaton_consumer_lag" for name, _ in s)
            and total(s, "binbaton_consumer_lag") == 0))
        assert total(after, "binbaton_requests_total", stage="worker", status="ok") == SERVED
        assert total(after, "binbaton_requests_total", stage="worker", status="error") == TOO_LONG
        assert total(after, "binbaton_request_errors_total", code="too_long") == TOO_LONG
        assert total(after, "gen_ai_server_time_to_first_token_seconds_count") == SERVED
        assert total(after, "gen_ai_server_time_per_output_token_seconds_count") == SERVED
        assert total(after, "gen_ai_server_request_duration_seconds_count") == len(sent)
        assert total(after, "binbaton_output_tokens_total") == \
            sum(r.usage.completion_tokens for r in ok)
        assert total(after, "binbaton_predictor_error_tokens_count") == SERVED
        for bin_index in ("0", "1"):
            assert after[("binbaton_queue_depth", (("bin", bin_index),))] == 0
        lag_topics = {dict(labels)["topic"] for name, labels in after
                      if name == "binbaton_consumer_lag"}
        assert lag_topics == {topics.bin(0), topics.bin(1)}
        assert total(after, "binbaton_consumer_lag") == 0
        assert after[("binbaton_batch_running", (("bin", "all"),))] == 0

        routed = await asyncio.to_thread(scrape, classifier_port)
        assert total(routed, "binbaton_routed_requests_total") == len(sent)
        assert total(routed, "binbaton_requests_total", stage="classifier", status="ok") == \
            len(sent)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(classifier, worker), 60)
        await asyncio.to_thread(telemetry.shutdown)
        metrics.close()

    ids = {r.id for r in sent}
    rows, _ = await read_spans(broker, topics.traces, lambda rows: len(
        {r.trace_id for r in rows if r.service == WORKER_SERVICE}) >= len(sent))
    traces: dict[str, list[SpanRow]] = {}
    for row in rows:
        traces.setdefault(row.trace_id, []).append(row)
    assert len(traces) == len(sent)  # exactly one trace per request
    for spans in traces.values():
        (request_id,) = {s.attributes.get("binbaton.request.id") for s in spans}
        assert request_id in ids  # binbaton.request.id on every span
        assert {s.service for s in spans} == {CLIENT_SERVICE, CLASSIFIER_SERVICE,
                                              WORKER_SERVICE}
        by_id = {s.span_id: s for s in spans}
        (root,) = [s for s in spans if not s.parent_id]
        assert (root.name, root.service) == (f"send {topics.requests}", CLIENT_SERVICE)
        result = results[request_id]
        bin_topic = topics.bin(result.bin)
        # by_id[...] raises KeyError for a parent outside the trace.
        edges = {(s.name, s.service, by_id[s.parent_id].name) for s in spans if s.parent_id}
        classifier_edges = {
            (f"process {topics.requests}", CLASSIFIER_SERVICE, f"send {topics.requests}"),
            *((stage, CLASSIFIER_SERVICE, f"process {topics.requests}")
              for stage in ("validate", "tokenize", "predict", "route")),
            (f"send {bin_topic}", CLASSIFIER_SERVICE, f"process {topics.requests}"),
            (f"process {bin_topic}", WORKER_SERVICE, f"send {bin_topic}"),
            (f"send {topics.results}", WORKER_SERVICE, f"process {bin_topic}"),
        }
        (process,) = [s for s in spans if s.name == f"process {bin_topic}"]
        assert process.attributes["messaging.consumer.group.name"] == \
            worker_config.group_id(result.bin)
        assert process.attributes["binbaton.bin"] == result.bin
        assert process.attributes["gen_ai.request.max_tokens"] > 0
        if result.status == "ok":
            stages = {(name, WORKER_SERVICE, f"process {bin_topic}")
                      for name in ("queue wait", "prefill", "kv insert", "decode")}
            assert edges == classifier_edges | stages
            assert not process.error
            (insert,) = [s for s in spans if s.name == "kv insert"]
            assert insert.attributes["binbaton.timing.measured"] is True
            (decode,) = [s for s in spans if s.name == "decode"]
            assert decode.attributes["gen_ai.usage.output_tokens"] == \
                result.usage.completion_tokens
        else:  # rejected by the engine: no stages past the queue, a dead letter, an error
            assert edges == classifier_edges | {
                ("queue wait", WORKER_SERVICE, f"process {bin_topic}"),
                (f"send {topics.dlq}", WORKER_SERVICE, f"process {bin_topic}")}
            assert process.error and process.attributes["error.type"] == "too_long"
