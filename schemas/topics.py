"""Every topic and consumer group name the service uses on Kafka, built here and only here.

Topics: ``<prefix>.requests``, ``<prefix>.bin.<i>``, ``<prefix>.results``, ``<prefix>.dlq``,
``<prefix>.traces``. Groups: ``<prefix>.worker.bin-<i>`` (the workers of bin i),
``<prefix>.classifier`` (the classifier on the requests) and
``<prefix>.classifier.feedback`` (the classifier learning from the results).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from binbaton.schemas.settings import ConfigError, setting

DEFAULT_PREFIX = "binbaton"
PREFIX_CHARACTERS = frozenset(string.ascii_letters + string.digits + "._-")


def check_prefix(prefix: str) -> str:
    if not prefix or any(c not in PREFIX_CHARACTERS for c in prefix):
        raise ConfigError(f"topic_prefix must be non-empty [A-Za-z0-9._-], got {prefix!r}")
    return prefix


def prefix_of(topic: str) -> str:
    """The prefix of a name built here (``p.requests`` -> ``p``)."""
    return topic.rsplit(".", 2 if ".bin." in topic else 1)[0]


@dataclass(frozen=True)
class TopicNames:
    """The names under one prefix."""

    prefix: str = field(default=DEFAULT_PREFIX, metadata=setting(
        "prefix of every topic name", flag="topic-prefix", parse=check_prefix))

    def __post_init__(self) -> None:
        check_prefix(self.prefix)

    @property
    def requests(self) -> str:
        return f"{self.prefix}.requests"

    def bin(self, index: int) -> str:
        return f"{self.prefix}.bin.{index}"

    @property
    def results(self) -> str:
        return f"{self.prefix}.results"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    @property
    def traces(self) -> str:
        return f"{self.prefix}.traces"

    def worker_group(self, index: int) -> str:
        """Consumer group of the workers serving bin ``index``."""
        return f"{self.prefix}.worker.bin-{index}"

    @property
    def classifier_group(self) -> str:
        return f"{self.prefix}.classifier"

    @property
    def feedback_group(self) -> str:
        """The classifier's group on the results topic (learning from actual lengths)."""
        return f"{self.prefix}.classifier.feedback"
