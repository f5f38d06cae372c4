"""The pipeline end to end through the real embedded broker: client → classifier → bins →
workers → results, with the real engine on a tiny checkpoint (in-process services)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from binbaton.schemas.codec import decode_dead_letter, encode
from binbaton.schemas.messages import DeadLetter, Request
from binbaton.service.app.supervisor import split_bins
from binbaton.service.classifier.config import ClassifierConfig
from binbaton.service.classifier.router import Decision, Router
from binbaton.service.classifier.service import Classifier
from binbaton.service.kafka.client import ResultFollower
from binbaton.service.kafka.config import KafkaConfig
from binbaton.service.kafka.topics import TopicsConfig, create_service_topics
from binbaton.workers.config import WorkerConfig
from binbaton.workers.engine.async_engine import AsyncEngine
from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.engine import Engine
from binbaton.workers.engine.request import GenerationRequest, SamplingParams
from binbaton.workers.worker import serve
from helpers.fakes import ExplodingPredictor
from helpers.kafka import read_records

BIN_EDGES = (8, 16)  # k = 3 bins by predicted tokens (the max_tokens predictor)
MAX_TOKENS_LIMIT = 48
MAX_REQUEST_BYTES = 4096
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def kafka_config(bootstrap: str) -> KafkaConfig:
    # Short group timings: joins and rebalances settle in a second, not Kafka's 10 s+.
    return KafkaConfig(bootstrap_servers=bootstrap, session_timeout_ms=4000,
                       heartbeat_interval_ms=400)


@dataclass
class Pipeline:
    kafka: KafkaConfig
    topics: TopicsConfig
    classifier: Classifier
    tasks: list[asyncio.Task[object]]
    worker_bins: list[tuple[int, ...]]

    def alive(self) -> bool:
        return all(not task.done() for task in self.tasks)


@contextlib.asynccontextmanager
async def pipeline(bootstrap: str, prefix: str, model: Path, workers: int = 2
                   ) -> AsyncIterator[Pipeline]:
    """Topics, a classifier and ``workers`` workers (bins split as `binbaton up` does)."""
    kafka = kafka_config(bootstrap)
    topics = TopicsConfig(prefix=prefix, num_bins=len(BIN_EDGES) + 1)
    await create_service_topics(bootstrap, topics)
    config = ClassifierConfig(model=str(model), bin_edges=BIN_EDGES, predictor="max_tokens",
                              max_tokens_limit=MAX_TOKENS_LIMIT,
                              max_request_bytes=MAX_REQUEST_BYTES, batch_size=32)
    classifier = Classifier(kafka, topics, config)
    stop = asyncio.Event()
    started = asyncio.Event()
    tasks: list[asyncio.Task[object]] = [asyncio.create_task(classifier.run(stop, started))]
    worker_bins = split_bins(topics.num_bins, workers)
    for index, bins in enumerate(worker_bins):
        engine = AsyncEngine(Engine(EngineConfig(model=str(model), max_batch=16,
                                                 kernel_backend="torch")))
        worker = WorkerConfig(bins=bins, topic_prefix=prefix, worker_id=f"w{index}",
                              commit_interval_s=0.2)
        tasks.append(asyncio.create_task(serve(worker, engine, kafka, stop)))
    await asyncio.wait_for(started.wait(), 30)
    try:
        yield Pipeline(kafka, topics, classifier, tasks, worker_bins)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)


async def send(kafka: KafkaConfig, topic: str, messages: list[tuple[bytes | None, bytes]],
               headers: list[tuple[str, bytes]] | None = None) -> None:
    """A plain aiokafka producer: (key, value) pairs."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers,
                                enable_idempotence=False, max_request_size=1 << 20)
    await producer.start()
    try:
        acks = [await producer.send(topic, value=value, key=key, headers=headers)
                for key, value in messages]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


async def read_all(kafka: KafkaConfig, topic: str, partitions: int, expected: int,
                   timeout: float) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    """Messages of ``topic`` (assigned partitions) until ``expected`` or the timeout."""
    records = await read_records(kafka.bootstrap_servers, topic, partitions,
                                 lambda records: len(records) >= expected, timeout)
    return [(r.key, r.value, list(r.headers)) for r in records]


def mixed_requests(count: int, seed: int = 0) -> list[Request]:
    """Text and token-id prompts of 1-60 tokens, max_tokens 1-24, some ignoring EOS."""
    rng = random.Random(seed)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "kafka", "bins",
             "batch", "insert"]
    requests = []
    for i in range(count):
        max_tokens = rng.choice([rng.randint(1, 8), rng.randint(9, 16), rng.randint(17, 24)])
        if i % 3 == 0:
            length = rng.randint(1, 60)
            prompt = {"prompt_token_ids": [rng.randrange(3, 500) for _ in range(length)]}
        else:
            prompt = {"prompt": " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))}
        requests.append(Request(id=f"req-{i:03d}", max_tokens=max_tokens,
                                ignore_eos=i % 4 == 0, metadata={"i": str(i)}, **prompt))
    return requests


def generation_request(decision: Decision) -> GenerationRequest:
    request = decision.request
    return GenerationRequest(
        id=request.id, prompt_token_ids=decision.prompt_token_ids,
        sampling=SamplingParams(max_tokens=request.max_tokens, ignore_eos=request.ignore_eos),
        bin=decision.bin, predicted_tokens=decision.predicted_tokens,
    )


@pytest.mark.slow
async def test_300_requests_served_once_each_like_hf_generate(
    broker: str, unique_prefix: str, tiny_llama_dir: Path, hf_reference
) -> None:
    requests = mixed_requests(300)
    async with pipeline(broker, unique_prefix, tiny_llama_dir) as running:
        async with ResultFollower(running.kafka, running.topics.results) as follower:
            await send(running.kafka, running.topics.requests,
                       [(r.id.encode(), encode(r)) for r in requests],
                       headers=[("traceparent", TRACEPARENT)])
            results = await follower.collect([r.id for r in requests], timeout=150)
            await asyncio.sleep(0.5)  # any late duplicate or second result shows up now
            await follower.poll()
        assert running.alive()
        worker_bins = running.worker_bins
        binned = await read_all(running.kafka, running.topics.bin(0), 2, 1, timeout=5)

    # Exactly one ok result per id (after de-duplication), and no id also failed.
    assert len(results) == len(requests), f"missing: {set(r.id for r in requests) - set(results)}"
    assert all(r.status == "ok" for r in results.values()), [
        r for r in results.values() if r.status != "ok"][:3]
    statuses = Counter((r.id, r.status) for r in follower.received)
    assert {status for (_, status) in statuses} == {"ok"}

    # Each bin served what the classifier's decision (the `binbaton predict` path) named.
    config = ClassifierConfig(model=str(tiny_llama_dir), bin_edges=BIN_EDGES,
                              predictor="max_tokens", max_tokens_limit=MAX_TOKENS_LIMIT)
    decisions = Router.from_config(config).decide(requests)
    assert all(isinstance(d, Decision) for d in decisions)
    serving = {b: {f"w{w}" for w, bins in enumerate(worker_bins) if b in bins}
               for b in range(3)}
    for decision in decisions:
        result = results[decision.request.id]
        assert (result.bin, result.predicted_tokens) == (decision.bin, decision.predicted_tokens)
        assert result.worker in serving[decision.bin]
        assert result.metadata == decision.request.metadata
        assert result.usage.prompt_tokens == len(decision.prompt_token_ids)
    assert len({d.bin for d in decisions}) == 3
    assert binned and ("traceparent", TRACEPARENT) in binned[0][2]  # passed through unchanged

    # Greedy tokens: every id equals the engine's offline generate; a sample equals HF.
    offline = Engine(EngineConfig(model=str(tiny_llama_dir), policy="static", max_batch=32,
                                  kernel_backend="torch"))
    reference = {o.id: list(o.token_ids)
                 for o in offline.generate([generation_request(d) for d in decisions])}
    differ = [i for i, r in results.items() if r.token_ids != reference[i]]
    assert not differ, f"{len(differ)} differ from offline generate, e.g. {differ[:3]}"
    sample = [generation_request(d) for d in decisions if not d.request.ignore_eos][::10]
    hf = hf_reference(tiny_llama_dir, sample)
    assert all(results[r.id].token_ids == hf[r.id] for r in sample)


async def test_a_burst_into_one_bin_keeps_every_worker_busy(
    broker: str, unique_prefix: str, tiny_llama_dir: Path
) -> None:
    """Workers split as `binbaton up` splits them: both serve every bin, each from its share
    of the bin's partitions, so short requests that all land in one bin reach both."""
    requests = [Request(id=f"burst-{i}", prompt=f"short {i}", max_tokens=4) for i in range(40)]
    async with pipeline(broker, unique_prefix, tiny_llama_dir, workers=2) as running:
        async with ResultFollower(running.kafka, running.topics.results) as follower:
            await send(running.kafka, running.topics.requests,
                       [(r.id.encode(), encode(r)) for r in requests])
            results = await follower.collect([r.id for r in requests], timeout=90)
        assert running.alive()
    assert {r.bin for r in results.values()} == {0}  # max_tokens 4: all in bin 0
    assert all(r.status == "ok" for r in results.values())
    by_worker = Counter(r.worker for r in results.values())
    assert set(by_worker) == {"w0", "w1"}, by_worker


BAD_INPUTS: list[tuple[str, bytes | None, bytes, str | None, str]] = [
    # (case, key, value, recoverable id, error code)
    ("invalid json, no key", None, b"{not json", None, "invalid_json"),
    ("invalid json, keyed", b"k-json", b'{"id": "k-json", "prompt": ', "k-json", "invalid_json"),
    ("not utf-8", None, b"\xff\xfe\x00", None, "invalid_json"),
    ("empty value", None, b"", None, "invalid_json"),
    ("json array", None, b"[1, 2]", None, "invalid_request"),
    ("wrong type", None, b'{"id": "b-type", "prompt": "hi", "max_tokens": "ten"}',
     "b-type", "invalid_request"),
    ("missing id", None, b'{"prompt": "hello"}', None, "invalid_request"),
    ("id too long", None, b'{"id": "' + b"x" * 129 + b'", "prompt": "hi"}', None,
     "invalid_request"),
    ("neither prompt", None, b'{"id": "b-neither", "max_tokens": 3}', "b-neither",
     "invalid_request"),
    ("both prompts", None, b'{"id": "b-both", "prompt": "a", "prompt_token_ids": [5]}',
     "b-both", "invalid_request"),
    ("top_p out of range", None, b'{"id": "b-topp", "prompt": "a", "top_p": 1.5}', "b-topp",
     "invalid_request"),
    ("negative temperature", None, b'{"id": "b-temp", "prompt": "a", "temperature": -1}',
     "b-temp", "invalid_request"),
    ("max_tokens zero", None, b'{"id": "b-zero", "prompt": "a", "max_tokens": 0}', "b-zero",
     "invalid_request"),
    ("unknown field", None, b'{"id": "b-field", "prompt": "a", "tempreature": 1}', "b-field",
     "invalid_request"),
    ("max_tokens over the server limit", None,
     b'{"id": "b-limit", "prompt": "a", "max_tokens": 49}', "b-limit", "max_tokens_too_large"),
    ("prompt longer than the context", None,
     encode(Request(id="b-long", prompt_token_ids=[5] * 512, max_tokens=4)), "b-long",
     "prompt_too_long"),
    ("prompt + max_tokens over the context", None,
     encode(Request(id="b-over", prompt_token_ids=[5] * 500, max_tokens=40)), "b-over",
     "too_long"),
    ("token id outside the vocabulary", None,
     b'{"id": "b-vocab", "prompt_token_ids": [5, 999999], "max_tokens": 3}', "b-vocab",
     "token_out_of_range"),
    ("oversized message", None,
     encode(Request(id="b-huge", prompt="word " * 1000, max_tokens=4)), "b-huge",
     "message_too_large"),
    ("n other than 1", None, b'{"id": "b-n", "prompt": "a", "n": 3}', "b-n", "unsupported_n"),
    ("stream", None, b'{"id": "b-stream", "prompt": "a", "stream": true}', "b-stream",
     "unsupported_stream"),
    ("messages for a model without a chat template", None,
     b'{"id": "b-chat", "messages": [{"role": "user", "content": "hi"}]}', "b-chat",
     "no_chat_template"),
]


async def test_bad_input_is_dead_lettered_and_answered_valid_requests_served(
    broker: str, unique_prefix: str, tiny_llama_dir: Path
) -> None:
    valid = [Request(id=f"good-{i}", prompt="the quick brown fox", max_tokens=1 + i % 20)
             for i in range(len(BAD_INPUTS) + 1)]
    messages: list[tuple[bytes | None, bytes]] = []
    for good, (_, key, value, _, _) in zip(valid, BAD_INPUTS, strict=False):
        messages += [(good.id.encode(), encode(good)), (key, value)]
    messages.append((valid[-1].id.encode(), encode(valid[-1])))
    known = {rid: code for (_, _, _, rid, code) in BAD_INPUTS if rid is not None}

    async with pipeline(broker, unique_prefix, tiny_llama_dir) as running:
        async with ResultFollower(running.kafka, running.topics.results) as follower:
            # One by one: each lands in whichever partition, interleaved with valid ones.
            for message in messages:
                await send(running.kafka, running.topics.requests, [message])
            results = await follower.collect([r.id for r in valid] + list(known), timeout=60)
        letters = [decode_dead_letter(value) for _, value, _ in
                   await read_all(running.kafka, running.topics.dlq, 1, len(BAD_INPUTS), 20)]
        await asyncio.sleep(0.5)
        assert running.alive(), "a service task ended"
        assert running.classifier.stats.rejected == len(BAD_INPUTS)

    # Every valid request served.
    assert all(results[r.id].status == "ok" for r in valid)
    # An error result, with the right code, for every bad input whose id is known.
    for rid, code in known.items():
        assert results[rid].status == "error" and results[rid].finish_reason == "error"
        assert results[rid].error is not None and results[rid].error.code == code, rid
    # One dead letter per bad input, keyed by the id when it is known, with the raw bytes.
    assert len(letters) == len(BAD_INPUTS)
    by_code = Counter(letter.error.code for letter in letters)
    assert by_code == Counter(code for (*_, code) in BAD_INPUTS)
    assert Counter(letter.key for letter in letters) == Counter(rid for (_, _, _, rid, _)
                                                                in BAD_INPUTS)
    assert all(isinstance(letter, DeadLetter) and letter.stage == "classifier"
               and letter.topic == running.topics.requests for letter in letters)
    raw_of = {letter.key: letter.raw for letter in letters if letter.key}
    assert base64.b64decode(raw_of["b-type"]) == BAD_INPUTS[5][2]


async def test_a_librdkafka_client_produces_and_reads_by_assigned_partitions(
    broker: str, unique_prefix: str, tiny_llama_dir: Path
) -> None:
    """confluent-kafka (librdkafka): its consumer groups hang on the embedded broker, so the
    client assigns the results partitions itself, as the README shows."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    import json

    async with pipeline(broker, unique_prefix, tiny_llama_dir, workers=1) as running:
        request = {"id": "rdkafka-1", "prompt": "the quick brown fox", "max_tokens": 5}

        def produce_and_read() -> dict:
            producer = confluent_kafka.Producer({"bootstrap.servers": broker})
            producer.produce(running.topics.requests, key=request["id"],
                             value=json.dumps(request))
            assert producer.flush(10) == 0
            consumer = confluent_kafka.Consumer({
                "bootstrap.servers": broker, "group.id": "unused-but-required",
                "enable.auto.commit": False})
            consumer.assign([confluent_kafka.TopicPartition(running.topics.results, p,
                                                            confluent_kafka.OFFSET_BEGINNING)
                             for p in range(running.topics.results_partitions)])
            try:
                for _ in range(300):  # up to 30 s
                    message = consumer.poll(0.1)
                    if message is None or message.error():
                        continue
                    result = json.loads(message.value())
                    if result["id"] == request["id"]:
                        return result
            finally:
                consumer.close()
            raise AssertionError("no result within 30 s")

        result = await asyncio.to_thread(produce_and_read)
        assert running.alive()
    assert result["status"] == "ok" and len(result["token_ids"]) == 5


async def test_a_predictor_bug_dead_letters_only_its_request(
    broker: str, unique_prefix: str, tiny_llama_dir: Path
) -> None:
    kafka = kafka_config(broker)
    topics = TopicsConfig(prefix=unique_prefix, num_bins=1)
    await create_service_topics(broker, topics)
    config = ClassifierConfig(model=str(tiny_llama_dir), bin_edges=(), predictor="max_tokens")
    router = Router.from_config(config)
    router.predictor = ExplodingPredictor()
    stop, started = asyncio.Event(), asyncio.Event()
    classifier = Classifier(kafka, topics, config, router)
    task = asyncio.create_task(classifier.run(stop, started))
    await asyncio.wait_for(started.wait(), 30)
    requests = [Request(id=i, prompt=p, max_tokens=4)
                for i, p in [("fine-1", "hello"), ("bomb", "boom goes it"), ("fine-2", "hi")]]
    async with ResultFollower(kafka, topics.results) as follower:
        await send(kafka, topics.requests, [(r.id.encode(), encode(r)) for r in requests])
        results = await follower.collect(["bomb"], timeout=30)
        routed = await read_all(kafka, topics.bin(0), 2, 2, timeout=20)
    assert not task.done(), "the classifier stopped"
    stop.set()
    await asyncio.wait_for(task, 30)
    assert results["bomb"].error is not None and results["bomb"].error.code == "internal"
    assert sorted(key for key, _, _ in routed) == [b"fine-1", b"fine-2"]


async def test_any_exception_on_one_message_dead_letters_only_that_message(
    broker: str, unique_prefix: str, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in decoding (not an InvalidMessage) or in sending one decision is an
    ``internal`` error for that message; the classifier routes the rest."""
    from binbaton.service.classifier import service

    real_decode, real_send = service.decode_request, Classifier._send_binned

    def decode(raw: bytes) -> Request:
        if b"kaboom" in raw:
            raise RecursionError("maximum recursion depth exceeded")
        return real_decode(raw)

    async def send_binned(self, record, decision, received, classified):
        if decision.request.id == "send-bug":
            raise ValueError("cannot encode")
        return await real_send(self, record, decision, received, classified)

    monkeypatch.setattr(service, "decode_request", decode)
    monkeypatch.setattr(Classifier, "_send_binned", send_binned)
    kafka = kafka_config(broker)
    topics = TopicsConfig(prefix=unique_prefix, num_bins=1)
    await create_service_topics(broker, topics)
    config = ClassifierConfig(model=str(tiny_llama_dir), bin_edges=(), predictor="max_tokens")
    stop, started = asyncio.Event(), asyncio.Event()
    classifier = Classifier(kafka, topics, config, Router.from_config(config))
    task = asyncio.create_task(classifier.run(stop, started))
    await asyncio.wait_for(started.wait(), 30)
    requests = [Request(id=i, prompt=p, max_tokens=4) for i, p in
                [("fine-1", "hello"), ("decode-bug", "kaboom"), ("send-bug", "x"),
                 ("fine-2", "hi")]]
    async with ResultFollower(kafka, topics.results) as follower:
        await send(kafka, topics.requests, [(r.id.encode(), encode(r)) for r in requests])
        results = await follower.collect(["decode-bug", "send-bug"], timeout=30)
        routed = await read_all(kafka, topics.bin(0), 2, 2, timeout=20)
        letters = await read_all(kafka, topics.dlq, 1, 2, timeout=20)
    assert not task.done(), "the classifier stopped"
    stop.set()
    await asyncio.wait_for(task, 30)
    for rid in ("decode-bug", "send-bug"):
        assert results[rid].error is not None and results[rid].error.code == "internal", rid
    assert sorted(key for key, _, _ in letters) == [b"decode-bug", b"send-bug"]
    assert sorted(key for key, _, _ in routed) == [b"fine-1", b"fine-2"]


async def test_a_message_the_classifier_died_on_is_routed_alone_then_dead_lettered_as_poison(
    broker: str, unique_prefix: str, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """Attempt records left by classifiers that died (written here as a dead one would have)
    are read by the next: one death, the message is routed alone; --max-attempts deaths, it
    is dead-lettered as ``poison`` and never routed."""
    from binbaton.service.kafka.attempts import AttemptJournal, MessageKey

    kafka = kafka_config(broker)
    topics = TopicsConfig(prefix=unique_prefix, num_bins=1)
    await create_service_topics(broker, topics)
    requests = [Request(id=f"c{i}", prompt=f"hello {i}", max_tokens=4) for i in range(4)]
    await send(kafka, topics.requests, [(r.id.encode(), encode(r)) for r in requests])
    placed = await read_records(broker, topics.requests, topics.requests_partitions,
                                lambda records: len(records) >= 4, 20)
    keys = {r.key.decode(): MessageKey(r.topic, r.partition, r.offset) for r in placed}
    journal = AttemptJournal(tmp_path)
    for _ in range(3):
        journal.begin(keys["c1"])  # three classifiers died routing it
    journal.begin(keys["c2"])  # one did
    config = ClassifierConfig(model=str(tiny_llama_dir), bin_edges=(), predictor="max_tokens",
                              state_dir=str(tmp_path), max_attempts=3)
    stop, started = asyncio.Event(), asyncio.Event()
    classifier = Classifier(kafka, topics, config)
    task = asyncio.create_task(classifier.run(stop, started))
    async with ResultFollower(kafka, topics.results) as follower:
        results = await follower.collect(["c1"], timeout=30)
        routed = await read_all(kafka, topics.bin(0), 2, 3, timeout=20)
        letters = await read_all(kafka, topics.dlq, 1, 1, timeout=20)
    assert not task.done(), "the classifier stopped"
    stop.set()
    await asyncio.wait_for(task, 30)
    assert results["c1"].error is not None and results["c1"].error.code == "poison"
    assert [(key, decode_dead_letter(value).error.code) for key, value, _ in letters] == [
        (b"c1", "poison")]
    assert sorted(key for key, _, _ in routed) == [b"c0", b"c2", b"c3"]
    assert all(journal.attempts(key) == 0 for key in keys.values())  # answered: forgotten
