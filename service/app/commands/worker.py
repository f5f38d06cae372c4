"""``binbaton worker --bins 0,1``: one worker process: load the model, serve the bins until a
signal (the first drains, a second skips the drain)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from binbaton.service.app.command import Command
from binbaton.service.app.configs import engine_config, kafka_config, worker_config
from binbaton.service.app.flags import Values
from binbaton.service.app.sections import METRICS, TOPICS, TRACING, WATCHDOG, WORKER_PROCESS
from binbaton.service.app.signals import run_until_signal, watch_parent
from binbaton.service.kafka.topics import ensure_topics
from binbaton.service.telemetry.metrics import Metrics
from binbaton.service.telemetry.tracing import WORKER_SERVICE, setup_tracing
from binbaton.workers.engine.async_engine import AsyncEngine
from binbaton.workers.engine.engine import Engine
from binbaton.workers.worker import serve

log = logging.getLogger("binbaton")


def run(args: argparse.Namespace, values: Values) -> int:
    watch_parent(WATCHDOG.build(values))
    kafka = kafka_config(values, client_id="binbaton-worker")
    topics = TOPICS.part("prefix", "partitions").build(values)
    worker = worker_config(values, topics)
    engine = engine_config(values)
    # Subscribing to a missing topic would auto-create it with the broker's defaults;
    # topics that exist are used as they are.
    plan = {worker.bin_topic(b): topics.partitions for b in worker.bins}
    plan |= {topics.results: topics.partitions, topics.dlq: 1}
    asyncio.run(ensure_topics(kafka.bootstrap_servers, plan, strict=False))
    telemetry = setup_tracing(WORKER_SERVICE, TRACING.build(values),
                              bootstrap_servers=kafka.bootstrap_servers,
                              traces_topic=topics.traces, model=engine.model,
                              resource_attributes={"service.instance.id": worker.worker_id})
    metrics = Metrics(model=engine.model)
    port = metrics.serve(METRICS.build(values))
    if port is not None:
        log.info("worker metrics on port %d", port)
    try:
        # The model loads before joining any group; one that cannot load raises
        # ModelLoadError, which the dispatcher reports on one line.
        loaded = AsyncEngine(Engine(engine))
        return run_until_signal(lambda stop, abort: serve(
            worker, loaded, kafka, stop, abort, telemetry=telemetry,
            metrics=metrics if port is not None else None))
    finally:
        telemetry.shutdown()
        metrics.close()


COMMAND = Command("worker", WORKER_PROCESS, run)
main = COMMAND.main
