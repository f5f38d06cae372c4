"""Integration fixtures: a real embedded Kafka broker (tansu) on a free port. Every test
here is marked ``broker`` (``make unit`` leaves them out)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from binbaton.service.kafka.broker import EmbeddedBroker, free_port
from binbaton.service.kafka.topics import TopicsConfig, create_service_topics, ensure_topics

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.broker)


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """Bootstrap servers "127.0.0.1:PORT" of one embedded broker for the whole session.

    Its storage is in memory; tests keep apart by using their own topic prefix
    (``unique_prefix``) or their own topic names.
    """
    with EmbeddedBroker(port=free_port()) as embedded:
        yield embedded.bootstrap_servers


@pytest.fixture
def unique_prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix no other test uses, e.g. ``t.test_pipeline_serves_all``."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:80]
    return f"t.{name}.{free_port()}"


@pytest.fixture
def create_topics(broker: str) -> Callable[..., Awaitable[dict[str, int]]]:
    """``await create_topics(TopicsConfig(...))`` or ``await create_topics({"name": 2})``."""

    async def create(topics: TopicsConfig | dict[str, int]) -> dict[str, int]:
        if isinstance(topics, TopicsConfig):
            return await create_service_topics(broker, topics)
        return await ensure_topics(broker, topics)

    return create
