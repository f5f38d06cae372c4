"""``binbaton topics``: create every topic the service uses (idempotent); print each."""

from __future__ import annotations

import argparse
import asyncio

from binbaton.service.app.command import Command
from binbaton.service.app.configs import kafka_config, topics_config
from binbaton.service.app.flags import Values
from binbaton.service.app.sections import BOOTSTRAP, BROKER, CLASSIFIER, LOG, TOPICS, TRACING
from binbaton.service.kafka.topics import create_service_topics


def run(args: argparse.Namespace, values: Values) -> int:
    kafka = kafka_config(values, client_id="binbaton-admin")
    created = asyncio.run(create_service_topics(kafka.bootstrap_servers, topics_config(values)))
    for name, partitions in created.items():
        print(f"{name}\t{partitions}")
    return 0


COMMAND = Command("topics", (BOOTSTRAP, BROKER, TOPICS, CLASSIFIER.part("bin_edges"), TRACING,
                             LOG), run)
main = COMMAND.main
