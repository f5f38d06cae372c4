"""Traces through the real broker: `binbaton produce`'s client spans are the parents of the
classifier's `process` spans, whose stages and `send binbaton.bin.<i>` spans hang below;
the classifier's Prometheus endpoint counts what it routed and rejected."""

from __future__ import annotations

import asyncio
from pathlib import Path

from binbaton.schemas.messages import Request
from binbaton.service.classifier.config import ClassifierConfig
from binbaton.service.classifier.service import run_classifier
from binbaton.service.kafka.broker import free_port
from binbaton.service.kafka.client import produce, request_message
from binbaton.service.kafka.config import KafkaConfig
from binbaton.service.kafka.topics import TopicsConfig, create_service_topics
from binbaton.service.telemetry.metrics import MetricsConfig
from binbaton.service.telemetry.tracing import TracingConfig
from helpers.kafka import read_records
from helpers.otlp import decode_rows
from helpers.prometheus import scrape_text


def spans_of(records) -> list[dict]:
    return [{"name": row.name, "service": row.service, "trace": row.trace_id,
             "id": row.span_id, "parent": row.parent_id, "request": row.request_id}
            for record in records for row in decode_rows(record.value)]


async def test_client_and_classifier_spans_form_one_trace_per_request(
    broker: str, unique_prefix: str, tiny_llama_dir: Path
) -> None:
    kafka = KafkaConfig(bootstrap_servers=broker, session_timeout_ms=4000,
                        heartbeat_interval_ms=400)
    topics = TopicsConfig(prefix=unique_prefix, num_bins=2)
    await create_service_topics(broker, topics)
    tracing = TracingConfig(export_delay_ms=50)
    config = ClassifierConfig(model=str(tiny_llama_dir), bin_edges=(8,), predictor="max_tokens",
                              max_tokens_limit=64)
    stop, started = asyncio.Event(), asyncio.Event()
    metrics_port = free_port()
    classifier = asyncio.create_task(
        run_classifier(kafka, topics, config, stop, started, tracing_config=tracing,
                       metrics_config=MetricsConfig(port=metrics_port, host="127.0.0.1")))
    await asyncio.wait_for(started.wait(), 30)
    requests = [Request(id=f"t{i}", prompt="the quick brown fox", max_tokens=4 + 8 * (i % 2))
                for i in range(4)] + [Request(id="t-bad", prompt="x", max_tokens=65)]
    await produce(kafka, topics.requests, [request_message(r) for r in requests],
                  tracing_config=tracing)
    binned = await read_records(broker, topics.bin(0), 2, lambda rs: len(rs) >= 2)
    binned += await read_records(broker, topics.bin(1), 2, lambda rs: len(rs) >= 2)
    await asyncio.sleep(0.3)
    scraped = await asyncio.to_thread(scrape_text, metrics_port)
    assert 'binbaton_routed_requests_total{bin="0"} 2.0' in scraped
    assert 'binbaton_routed_requests_total{bin="1"} 2.0' in scraped
    assert ('binbaton_request_errors_total{code="max_tokens_too_large",stage="classifier"} 1.0'
            in scraped)
    stop.set()
    await asyncio.wait_for(classifier, 30)  # shutting down flushes the spans
    spans = spans_of(await read_records(
        broker, topics.traces, 1,
        lambda rs: sum(s["service"] == "binbaton-classifier" for s in spans_of(rs)) >= 31))

    by_id = {s["id"]: s for s in spans}
    for request in requests:
        mine = [s for s in spans if s["request"] == request.id]
        (client,) = [s for s in mine if s["service"] == "binbaton-client"]
        assert client["name"] == f"send {topics.requests}" and client["parent"] == ""
        (process,) = [s for s in mine if s["name"] == f"process {topics.requests}"]
        assert process["parent"] == client["id"] and process["trace"] == client["trace"]
        stages = {s["name"] for s in mine if s["parent"] == process["id"]}
        assert {"tokenize", "validate", "predict", "route"} <= stages
        sends = [s for s in mine if s["name"].startswith("send ") and s is not client]
        assert sends and all(by_id[s["id"]]["parent"] == process["id"] for s in sends)
    # The bin message carries the classifier's send span as its parent context.
    for record in binned:
        traceparent = dict(record.headers)["traceparent"].decode()
        _, trace_id, span_id, _ = traceparent.split("-")
        assert by_id[span_id]["name"].startswith(f"send {topics.prefix}.bin.")
        assert by_id[span_id]["trace"] == trace_id
    bad = [s for s in spans if s["request"] == "t-bad" and s["service"] == "binbaton-classifier"]
    assert {s["name"] for s in bad} >= {f"send {topics.dlq}", f"send {topics.results}"}
