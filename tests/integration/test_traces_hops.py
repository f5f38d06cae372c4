"""Trace context across real Kafka hops: W3C headers survive the embedded broker, and the
spans of three processes' Telemetry rebuild into one tree per request from binbaton.traces.

The hops here are minimal relays (consume, forward) so that this test checks the tracing
library alone (the product's classifier and worker are wired to it separately).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from binbaton.service.telemetry import tracing
from binbaton.service.telemetry.tracing import (
    CLASSIFIER_SERVICE,
    CLIENT_SERVICE,
    WORKER_SERVICE,
    GenerationTimeline,
    Telemetry,
    TracingConfig,
    setup_tracing,
)
from helpers.otlp import SpanRow, read_spans


async def relay(telemetry: Telemetry, bootstrap: str, source: str, group: str, count: int,
                forward: Callable[[str], str], worker: bool) -> None:
    """Consume ``count`` records of ``source``; trace them as a hop and forward each."""
    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await consumer.start()
    await producer.start()
    try:
        seen = 0
        while seen < count:
            batch = await consumer.getmany(timeout_ms=500)
            for record in (r for part in batch.values() for r in part):
                seen += 1
                received = time.time()
                request_id = record.key.decode()
                with telemetry.process_span(record, group) as span:
                    if worker:
                        now = time.time()
                        timeline = GenerationTimeline(
                            received_ns=tracing.seconds_to_ns(received),
                            admitted_ns=tracing.seconds_to_ns(now),
                            first_token_ns=tracing.seconds_to_ns(now) + 1_000,
                            finished_ns=tracing.seconds_to_ns(now) + 5_000, output_tokens=4)
                        telemetry.record_generation(span, timeline, request_id)
                    else:
                        with telemetry.child_span(tracing.VALIDATE, request_id=request_id):
                            pass
                    target = forward(request_id)
                    with telemetry.send_span(target, request_id) as send:
                        send.acknowledged(await producer.send_and_wait(
                            target, record.value, key=record.key, headers=send.headers))
            await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


async def test_twenty_requests_make_twenty_traces_across_three_services(
    broker: str, unique_prefix: str,
    create_topics: Callable[[dict[str, int]], Awaitable[dict[str, int]]],
) -> None:
    names = {n: f"{unique_prefix}.{n}" for n in ("requests", "bin.0", "bin.1", "results",
                                                   "traces")}
    await create_topics({names["requests"]: 2, names["bin.0"]: 1, names["bin.1"]: 1,
                         names["results"]: 1, names["traces"]: 1})
    config = TracingConfig(export_delay_ms=50)

    def telemetry(service: str) -> Telemetry:
        return setup_tracing(service, config, bootstrap_servers=broker,
                             traces_topic=names["traces"])

    client, classifier, worker = (telemetry(s) for s in (CLIENT_SERVICE, CLASSIFIER_SERVICE,
                                                         WORKER_SERVICE))
    count = 20
    bin_of = {f"req-{i}": i % 2 for i in range(count)}
    hops = asyncio.gather(
        relay(classifier, broker, names["requests"], "classifier", count,
              lambda rid: names[f"bin.{bin_of[rid]}"], worker=False),
        relay(worker, broker, names["bin.0"], "worker-0", count // 2,
              lambda rid: names["results"], worker=True),
        relay(worker, broker, names["bin.1"], "worker-1", count // 2,
              lambda rid: names["results"], worker=True),
    )
    producer = AIOKafkaProducer(bootstrap_servers=broker, enable_idempotence=False)
    await producer.start()
    try:
        with client.tracer.start_as_current_span("produce"):  # the client's batch span
            for request_id in bin_of:
                with client.send_span(names["requests"], request_id, root=True) as send:
                    await producer.send_and_wait(names["requests"], b"{}",
                                                 key=request_id.encode(), headers=send.headers)
    finally:
        await producer.stop()
    await asyncio.wait_for(hops, timeout=60)
    for t in (client, classifier, worker):
        assert t.force_flush()

    # Per request: send; process, validate, send bin; process, 4 stages, send results.
    per_request = 1 + 3 + 6
    rows, keys = await read_spans(broker, names["traces"],
                                  lambda rows: len(rows) >= count * per_request + 1)
    for t in (client, classifier, worker):
        t.shutdown()

    request_rows = [r for r in rows if r.name != "produce"]
    assert len(request_rows) == count * per_request
    assert set(keys) == {r.trace_id for r in rows}  # each message keyed by its trace id
    traces: dict[str, list[SpanRow]] = {}
    for row in request_rows:
        traces.setdefault(row.trace_id, []).append(row)
    assert len(traces) == count  # one trace per request
    for spans in traces.values():
        (request_id,) = {s.request_id for s in spans}  # binbaton.request.id on every span
        assert request_id in bin_of
        by_id = {s.span_id: s for s in spans}
        roots = [s for s in spans if s.parent_id == ""]
        assert [(r.name, r.service) for r in roots] == \
            [(f"send {names['requests']}", CLIENT_SERVICE)]

        bin_topic = names[f"bin.{bin_of[request_id]}"]
        # by_id[...] raises KeyError for a parent outside the trace.
        chain = {s.name: (by_id[s.parent_id].name, s.service) for s in spans if s.parent_id}
        assert chain == {
            f"process {names['requests']}": (f"send {names['requests']}", CLASSIFIER_SERVICE),
            "validate": (f"process {names['requests']}", CLASSIFIER_SERVICE),
            f"send {bin_topic}": (f"process {names['requests']}", CLASSIFIER_SERVICE),
            f"process {bin_topic}": (f"send {bin_topic}", WORKER_SERVICE),
            "queue wait": (f"process {bin_topic}", WORKER_SERVICE),
            "prefill": (f"process {bin_topic}", WORKER_SERVICE),
            "kv insert": (f"process {bin_topic}", WORKER_SERVICE),
            "decode": (f"process {bin_topic}", WORKER_SERVICE),
            f"send {names['results']}": (f"process {bin_topic}", WORKER_SERVICE),
        }
