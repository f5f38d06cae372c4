"""Online learning through the real broker: the classifier routes requests, results with
actual lengths arrive on ``binbaton.results``, and the learned predictor's error falls."""

from __future__ import annotations

import asyncio

import numpy as np
from aiokafka import AIOKafkaProducer
from binbaton.schemas.codec import encode
from binbaton.schemas.messages import Request, Result, Usage
from binbaton.service.classifier.config import ClassifierConfig
from binbaton.service.classifier.router import Router
from binbaton.service.classifier.service import Classifier
from binbaton.service.kafka.config import KafkaConfig
from binbaton.service.kafka.topics import TopicsConfig, create_service_topics
from binbaton.service.predictor.features import FeatureConfig
from binbaton.service.predictor.interface import PredictionInput
from binbaton.service.predictor.learned import LengthModel
from binbaton.service.predictor.registry import make_predictor
from helpers.waiting import wait_for

KINDS = (  # the kind of prompt decides the answer length
    ("Compute {a} plus {b} and explain each step.", 40),
    ("Pretend you are a pirate named {a}; tell me about sailing to island {b}.", 160),
    ("Call the weather API for city {a} on day {b}.", 8),
)


def toy_pairs(count: int, seed: int) -> list[tuple[str, int]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        template, mean = KINDS[rng.integers(len(KINDS))]
        prompt = template.format(a=rng.integers(1000), b=rng.integers(1000))
        pairs.append((prompt, max(1, int(rng.normal(mean, mean * 0.1)))))
    return pairs


def probe_mae(predictor, probe: list[tuple[str, int]]) -> float:
    predicted = predictor.predict([PredictionInput(p, (), 256) for p, _ in probe])
    return float(np.mean([abs(p - a) for p, (_, a) in zip(predicted, probe, strict=True)]))


async def test_classifier_learns_lengths_from_results(
    broker, unique_prefix, tiny_llama_dir, tmp_path
):
    untrained = tmp_path / "untrained.npz"
    LengthModel(FeatureConfig(num_buckets=1 << 12)).save(untrained)
    snapshot = tmp_path / "state" / "online.npz"
    kafka = KafkaConfig(
        bootstrap_servers=broker, session_timeout_ms=4000, heartbeat_interval_ms=400
    )
    topics = TopicsConfig(prefix=unique_prefix, num_bins=3)
    await create_service_topics(broker, topics)
    config = ClassifierConfig(
        model=str(tiny_llama_dir),
        bin_edges=(16, 64),
        predictor="learned",
        predictor_path=str(untrained),
        predictor_snapshot=str(snapshot),
        predictor_learning_rate=1.0,  # starting from nothing: full normalised-LMS steps
        max_tokens_limit=256,
    )
    router = Router.from_config(config)
    predictor = router.predictor
    predictor.snapshot_every = 200
    classifier = Classifier(kafka, topics, config, router)
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(classifier.run(stop, started))
    producer = AIOKafkaProducer(bootstrap_servers=broker)
    await producer.start()
    try:
        await asyncio.wait_for(started.wait(), 30)
        probe = toy_pairs(100, seed=99)
        errors = [probe_mae(predictor, probe)]
        sent = 0
        for round_index in range(4):
            pairs = toy_pairs(150, seed=round_index)
            ids = [f"r{round_index}-{i}" for i in range(len(pairs))]
            for request_id, (prompt, _) in zip(ids, pairs, strict=True):
                request = Request(id=request_id, prompt=prompt, max_tokens=256)
                await producer.send(topics.requests, encode(request), key=request_id.encode())
            sent += len(pairs)
            await wait_for(lambda total=sent: classifier.stats.routed >= total)
            for request_id, (_, actual) in zip(ids, pairs, strict=True):
                result = Result(
                    id=request_id,
                    status="ok",
                    finish_reason="stop",
                    usage=Usage(prompt_tokens=10, completion_tokens=actual),
                )
                await producer.send(topics.results, encode(result), key=request_id.encode())
            # a result the classifier never routed is not learned from
            stranger = Result(
                id=f"unknown-{round_index}", status="ok", usage=Usage(completion_tokens=5000)
            )
            await producer.send(topics.results, encode(stranger))
            await producer.flush()
            await wait_for(lambda total=sent: classifier.stats.observed >= total)
            errors.append(probe_mae(predictor, probe))
        assert classifier.stats.observed == sent == 600
        assert errors[0] > 50  # untrained: predicts ~1 token for everything
        assert errors[-1] < 0.3 * errors[0], errors
        assert errors[-1] < errors[1], errors
        assert snapshot.exists()  # every 200 observations
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await producer.stop()
    # a restart picks up what it learned, not the untrained artifact
    restarted = make_predictor("learned", artifact=untrained, snapshot_path=snapshot)
    assert probe_mae(restarted, probe) < 0.5 * errors[0]
    # periodic snapshots only (every 200): the last < 200 observations were not yet saved
    assert 400 <= restarted.observed <= 600
