"""The classifier keeps what its learned predictor learned online when it stops: results
arrive through the real broker, and stopping writes the snapshot a restart resumes from."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaProducer
from binbaton.schemas.codec import encode
from binbaton.schemas.messages import Request, Result, Usage
from binbaton.service.classifier.config import ClassifierConfig
from binbaton.service.classifier.router import Router
from binbaton.service.classifier.service import Classifier
from binbaton.service.kafka.config import KafkaConfig
from binbaton.service.kafka.topics import TopicsConfig, create_service_topics
from binbaton.service.predictor.interface import PredictionInput
from binbaton.service.predictor.learned import LengthModel
from binbaton.service.predictor.registry import DEFAULT_ARTIFACT, make_predictor
from helpers.waiting import wait_for

PROMPTS = ("Call the weather API for city {i}.", "Tell me a long pirate story number {i}.")


def classifier_for(broker: str, prefix: str, model: Path, snapshot: Path) -> Classifier:
    kafka = KafkaConfig(bootstrap_servers=broker, session_timeout_ms=4000,
                        heartbeat_interval_ms=400)
    config = ClassifierConfig(model=str(model), bin_edges=(16, 64), predictor="learned",
                              predictor_snapshot=str(snapshot), max_tokens_limit=256)
    router = Router.from_config(config)
    router.predictor.snapshot_every = 1_000_000  # no periodic save in this test
    return Classifier(kafka, TopicsConfig(prefix=prefix, num_bins=3), config, router)


async def test_stopping_saves_what_was_learned_since_the_last_snapshot(
    broker: str, unique_prefix: str, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    snapshot = tmp_path / "online.npz"
    classifier = classifier_for(broker, unique_prefix, tiny_llama_dir, snapshot)
    await create_service_topics(broker, classifier.topics)
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(classifier.run(stop, started))
    topics = classifier.topics
    producer = AIOKafkaProducer(bootstrap_servers=broker)
    await producer.start()
    try:
        await asyncio.wait_for(started.wait(), 30)
        prompts = [PROMPTS[i % 2].format(i=i) for i in range(40)]
        for i, prompt in enumerate(prompts):
            request = Request(id=f"s{i}", prompt=prompt, max_tokens=256)
            await producer.send(topics.requests, encode(request), key=request.id.encode())
        await wait_for(lambda: classifier.stats.routed >= len(prompts))
        for i in range(len(prompts)):
            result = Result(id=f"s{i}", status="ok", finish_reason="stop",
                            usage=Usage(prompt_tokens=9, completion_tokens=200 if i % 2 else 3))
            await producer.send(topics.results, encode(result), key=result.id.encode())
        await producer.flush()
        await wait_for(lambda: classifier.stats.observed >= len(prompts))
        assert not snapshot.exists()  # learned, not yet saved
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await producer.stop()
    saved = LengthModel.load(snapshot)
    assert saved.info["observed"] == len(prompts)
    trained = LengthModel.load(DEFAULT_ARTIFACT)
    assert not np.array_equal(saved.sparse_weights, trained.sparse_weights)
    # a restart resumes from the snapshot: it predicts what the results taught it
    restarted = make_predictor("learned", snapshot_path=snapshot)
    items = [PredictionInput(p, (), 256) for p in prompts[:2]]
    assert restarted.predict(items) == classifier.router.predictor.predict(items)


async def test_stopping_without_learning_writes_no_snapshot(
    broker: str, unique_prefix: str, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    snapshot = tmp_path / "online.npz"
    classifier = classifier_for(broker, unique_prefix, tiny_llama_dir, snapshot)
    await create_service_topics(broker, classifier.topics)
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(classifier.run(stop, started))
    await asyncio.wait_for(started.wait(), 30)
    stop.set()
    await asyncio.wait_for(task, 30)
    assert not snapshot.exists()  # the trained artifact stays the starting point
