"""Chat requests through the real broker: `messages` rendered with the served model's chat
template give Hugging Face's tokens; a template that refuses them, an error result and a
dead letter; `stop` as a string."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from binbaton.schemas.codec import decode_dead_letter, encode
from binbaton.schemas.messages import ChatMessage, Request
from binbaton.service.app.commands.produce import COMMAND as PRODUCE
from binbaton.service.classifier.config import ClassifierConfig
from binbaton.service.classifier.service import Classifier
from binbaton.service.kafka.client import ResultFollower
from binbaton.service.kafka.config import KafkaConfig
from binbaton.service.kafka.topics import TopicsConfig, create_service_topics
from binbaton.workers.config import WorkerConfig
from binbaton.workers.engine.async_engine import AsyncEngine
from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.engine import Engine
from binbaton.workers.engine.request import GenerationRequest, SamplingParams
from binbaton.workers.engine.tiny import TINY_CHAT_TEMPLATE, save_tiny_checkpoint
from binbaton.workers.worker import serve
from helpers.kafka import read_records
from transformers import AutoTokenizer

CONVERSATIONS: dict[str, list[tuple[str, str]]] = {
    "chat-user": [("user", "What is the capital of Portugal?")],
    "chat-system": [("system", "Answer in one word."), ("user", "Translate to French: sea")],
    "chat-turns": [("user", "Write a short poem about the sea."), ("assistant", "The sea."),
                   ("user", "Summarize the following article in three sentences.")],
}
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-chat"), "llama", seed=0,
                                chat_template=TINY_CHAT_TEMPLATE)


@contextlib.asynccontextmanager
async def serving(bootstrap: str, prefix: str, model: Path) -> AsyncIterator[tuple[
        KafkaConfig, TopicsConfig, list[asyncio.Task[Any]]]]:
    """A classifier and one worker, one bin."""
    kafka = KafkaConfig(bootstrap_servers=bootstrap, session_timeout_ms=4000,
                        heartbeat_interval_ms=400)
    topics = TopicsConfig(prefix=prefix, num_bins=1)
    await create_service_topics(bootstrap, topics)
    config = ClassifierConfig(model=str(model), bin_edges=(), predictor="max_tokens")
    stop, started = asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task[Any]] = [
        asyncio.create_task(Classifier(kafka, topics, config).run(stop, started))]
    engine = AsyncEngine(Engine(EngineConfig(model=str(model), max_batch=8,
                                             kernel_backend="torch")))
    worker = WorkerConfig(bins=(0,), topic_prefix=prefix, worker_id="w0",
                          commit_interval_s=0.2)
    tasks.append(asyncio.create_task(serve(worker, engine, kafka, stop)))
    await asyncio.wait_for(started.wait(), 30)
    try:
        yield kafka, topics, tasks
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)


async def send(kafka: KafkaConfig, topic: str, requests: list[Request]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers,
                                enable_idempotence=False)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, value=encode(r), key=r.id.encode())
                               for r in requests])
    finally:
        await producer.stop()


def chat(request_id: str, turns: list[tuple[str, str]], **fields: Any) -> Request:
    return Request(id=request_id, messages=[ChatMessage(role=role, content=content)  # type: ignore[arg-type]
                                            for role, content in turns], **fields)


async def test_messages_equal_hf_generate_on_the_chat_template_and_stop_as_a_string(
    broker: str, unique_prefix: str, chat_model_dir: Path,
    hf_reference: Callable[[Path, list[Any]], dict[str, list[int]]],
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    prompts = {rid: tokenizer.apply_chat_template(
        [{"role": role, "content": content} for role, content in turns],
        add_generation_prompt=True, return_dict=True)["input_ids"]
        for rid, turns in CONVERSATIONS.items()}
    expected = hf_reference(chat_model_dir, [
        GenerationRequest(id=rid, prompt_token_ids=tuple(ids),
                          sampling=SamplingParams(max_tokens=MAX_TOKENS), bin=0,
                          predicted_tokens=MAX_TOKENS) for rid, ids in prompts.items()])
    # A stop string from inside the first answer's text: the answer must end before it.
    full_text = tokenizer.decode(expected["chat-user"], skip_special_tokens=True)
    cut = len(full_text) // 2
    stop = full_text[cut:cut + 2]
    assert stop.strip() and len(full_text) > 4, full_text

    # "chat-system" goes through `binbaton produce --chat --system`, the others as JSON.
    requests = [chat(rid, turns, max_tokens=MAX_TOKENS) for rid, turns in CONVERSATIONS.items()
                if rid != "chat-system"]
    (system, user) = [content for _, content in CONVERSATIONS["chat-system"]]
    cli = ["--bootstrap-servers", broker, "--topic-prefix", unique_prefix, "--id", "chat-system",
           "--chat", user, "--system", system, "--max-tokens", str(MAX_TOKENS)]
    requests.append(chat("chat-stop", CONVERSATIONS["chat-user"], max_tokens=MAX_TOKENS,
                         stop=stop, user="alice", model="tiny"))
    requests.append(chat("chat-refused", [("user", "hi"), ("system", "too late")]))
    async with serving(broker, unique_prefix, chat_model_dir) as (kafka, topics, tasks):
        async with ResultFollower(kafka, topics.results) as follower:
            await send(kafka, topics.requests, requests)
            assert await asyncio.to_thread(PRODUCE.main, cli) == 0
            results = await follower.collect([r.id for r in requests] + ["chat-system"],
                                             timeout=60)
        letters = await read_records(kafka.bootstrap_servers, topics.dlq, 1,
                                     lambda records: len(records) >= 1, timeout=10)
        assert all(not task.done() for task in tasks)

    for rid, ids in prompts.items():
        result = results[rid]
        assert result.status == "ok" and result.token_ids == expected[rid], rid
        assert result.usage.prompt_tokens == len(ids)

    stopped = results["chat-stop"]
    assert stopped.status == "ok" and stopped.finish_reason == "stop"
    assert stopped.text == full_text[:full_text.find(stop)]
    assert stopped.token_ids == expected["chat-user"][:len(stopped.token_ids)]
    assert stopped.metadata == {"model": "tiny", "user": "alice"}

    refused = results["chat-refused"]
    assert refused.status == "error" and refused.error is not None
    assert refused.error.code == "chat_template_error"
    assert "system message must come first" in refused.error.message
    (letter,) = [decode_dead_letter(r.value) for r in letters]
    assert letter.key == "chat-refused" and letter.error.code == "chat_template_error"
