"""``binbaton classifier``: the classifier service alone, until a signal."""

from __future__ import annotations

import argparse
import asyncio
import logging

from binbaton.service.app.command import Command
from binbaton.service.app.configs import classifier_config, kafka_config, topics_config
from binbaton.service.app.flags import Values
from binbaton.service.app.sections import (
    BROKER,
    CLASSIFIER,
    KAFKA,
    LOG,
    METRICS,
    TOPICS,
    TRACING,
)
from binbaton.service.app.signals import run_until_signal
from binbaton.service.classifier.service import run_classifier

log = logging.getLogger("binbaton")


def run(args: argparse.Namespace, values: Values) -> int:
    kafka = kafka_config(values, client_id="binbaton-classifier")
    topics, config = topics_config(values), classifier_config(values)

    async def serve(stop: asyncio.Event, abort: asyncio.Event) -> int:
        started = asyncio.Event()
        task = asyncio.create_task(run_classifier(kafka, topics, config, stop, started,
                                                  TRACING.build(values), METRICS.build(values)))
        await asyncio.wait([task, asyncio.create_task(started.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        if started.is_set():
            print("classifier ready", flush=True)
        stats = await task
        log.info("classifier stopped: %s", stats)
        return 0

    return run_until_signal(serve)


COMMAND = Command("classifier", (KAFKA, BROKER, TOPICS, CLASSIFIER, TRACING, METRICS, LOG), run)
main = COMMAND.main
