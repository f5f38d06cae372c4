"""The worker through the real embedded broker and a real tiny checkpoint.

In-process workers for serving, flow control and restarts; worker subprocesses
(``binbaton worker``) to be killed with SIGKILL and stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from binbaton.schemas.codec import decode_dead_letter, decode_result, encode
from binbaton.schemas.messages import BinnedRequest, Request, Result
from binbaton.service.app.supervisor import CLI_MODULE
from binbaton.service.kafka.config import KafkaConfig
from binbaton.service.kafka.topics import TopicsConfig
from binbaton.workers.config import WorkerConfig
from binbaton.workers.engine.async_engine import AsyncEngine
from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.engine import Engine
from binbaton.workers.engine.request import GenerationOutput, GenerationRequest, SamplingParams
from binbaton.workers.worker import EngineService, Worker
from helpers.waiting import wait_for

# Short group timings: a dead member is noticed within seconds, not Kafka's 10 s+.
SESSION_TIMEOUT_MS = 4000
HEARTBEAT_MS = 400


def kafka_config(bootstrap: str) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=bootstrap, session_timeout_ms=SESSION_TIMEOUT_MS,
                       heartbeat_interval_ms=HEARTBEAT_MS)


def binned(request_id: str, bin: int, prompt_ids: list[int], max_tokens: int,
           ignore_eos: bool = False) -> BinnedRequest:
    return BinnedRequest(
        request=Request(id=request_id, prompt_token_ids=prompt_ids, max_tokens=max_tokens,
                        ignore_eos=ignore_eos, metadata={"n": request_id}),
        prompt_token_ids=prompt_ids, predicted_tokens=max_tokens, bin=bin,
        received=1_700_000_000_000, classified=1_700_000_000_001,
    )


def traceparent(request_id: str) -> bytes:
    return f"00-{request_id.encode().hex():0>32}-00f067aa0ba902b7-01".encode()


async def produce(bootstrap: str, messages: Iterable[tuple[str, str | None, bytes]]) -> None:
    """(topic, key, value) each with a W3C traceparent header derived from the key."""
    producer = AIOKafkaProducer(**kafka_config(bootstrap).producer_kwargs("test-producer"))
    await producer.start()
    try:
        for topic, key, value in messages:
            headers = [("traceparent", traceparent(key))] if key else None
            await producer.send_and_wait(topic, value, key=key.encode() if key else None,
                                         headers=headers)
    finally:
        await producer.stop()


async def produce_binned(bootstrap: str, topics: TopicsConfig,
                         requests: Iterable[BinnedRequest]) -> None:
    await produce(bootstrap, [(topics.bin(b.bin), b.request.id, encode(b)) for b in requests])


@contextlib.asynccontextmanager
async def topic_reader(bootstrap: str, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A group-less consumer of every partition of ``topic`` from the beginning."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


class ResultLog:
    """Every Result on the results topic (with its headers), read in the background."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.results: list[tuple[Result, dict[str, bytes]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ResultLog:
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _read(self) -> None:
        async with topic_reader(self.bootstrap, self.topic) as consumer:
            async for message in consumer:
                self.results.append((decode_result(message.value), dict(message.headers)))

    def ids(self) -> set[str]:
        return {result.id for result, _ in self.results}

    def by_id(self) -> dict[str, list[Result]]:
        found: dict[str, list[Result]] = {}
        for result, _ in self.results:
            found.setdefault(result.id, []).append(result)
        return found

    async def wait_for(self, ids: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ids <= self.ids():
            assert time.monotonic() < deadline, f"no result for {sorted(ids - self.ids())}"
            await asyncio.sleep(0.05)


async def read_records(bootstrap: str, topic: str, count: int,
                       timeout: float = 10.0) -> list[ConsumerRecord]:
    records: list[ConsumerRecord] = []
    async with topic_reader(bootstrap, topic) as consumer:
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            records += [m for messages in batch.values() for m in messages]
    return records


async def committed_and_end(bootstrap: str, group: str, topic: str,
                            count: int) -> tuple[dict[int, int | None], dict[int, int]]:
    """The group's committed offset and the log end (last offset + 1) of every partition
    of ``topic``, which holds ``count`` messages."""
    ends: dict[int, int] = {}
    for record in await read_records(bootstrap, topic, count):
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    assert sum(ends.values()) >= count
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        committed = {p: await consumer.committed(TopicPartition(topic, p)) for p in ends}
        return committed, ends
    finally:
        await consumer.stop()


def make_engine(model_dir: Path) -> Engine:
    return Engine(EngineConfig(model=str(model_dir), device="cpu", dtype="float32", max_batch=8))


@contextlib.asynccontextmanager
async def running_worker(config: WorkerConfig, bootstrap: str, model_dir: Path,
                         engine: EngineService | None = None) -> AsyncIterator[Worker]:
    ready, stop = asyncio.Event(), asyncio.Event()
    engine = engine or AsyncEngine(make_engine(model_dir))
    worker = Worker(config, kafka_config(bootstrap), engine, on_ready=ready.set)
    task = asyncio.create_task(worker.run(stop))
    ready_wait = asyncio.create_task(ready.wait())
    await asyncio.wait([task, ready_wait], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    ready_wait.cancel()
    assert ready.is_set(), "worker did not become ready"
    try:
        yield worker
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0


class GatedEngine:
    """The real AsyncEngine, whose outputs are held back until ``gate`` opens: a worker
    that stays full for as long as a test needs."""

    def __init__(self, inner: AsyncEngine) -> None:
        self.inner = inner
        self.gate = asyncio.Event()

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self, timeout: float | None = None) -> None:
        self.gate.set()
        await self.inner.stop(timeout)

    def abort(self, request_id: str) -> bool:
        return self.inner.abort(request_id)

    def submit(self, request: GenerationRequest) -> asyncio.Future[GenerationOutput]:
        output = self.inner.submit(request)

        async def held() -> GenerationOutput:
            await self.gate.wait()
            return await output

        return asyncio.ensure_future(held())


def prompt_ids(i: int, length: int = 5) -> list[int]:
    return [3 + (i * 7 + j) % 200 for j in range(length)]


async def test_worker_serves_bins_publishes_results_and_commits(
    broker: str, unique_prefix: str, create_topics, tiny_llama_dir: Path
):
    topics = TopicsConfig(prefix=unique_prefix, num_bins=2, bin_partitions=2)
    await create_topics(topics)
    requests = [binned(f"r{i}", i % 2, prompt_ids(i, 3 + i % 4), max_tokens=2 + 3 * i)
                for i in range(8)]
    too_long = binned("too-long", 1, prompt_ids(99, 600), max_tokens=4)  # context is 512
    await produce_binned(broker, topics, [*requests, too_long])
    await produce(broker, [
        (topics.bin(0), None, b"{not json"),
        (topics.bin(1), "no-prompt", b'{"request": {"id": "no-prompt"}, "bin": 1}'),
    ])
    expected = {r.request.id for r in requests} | {"too-long", "no-prompt"}

    config = WorkerConfig(bins=(0, 1), topic_prefix=unique_prefix, worker_id="w-a",
                          commit_interval_s=0.2)
    async with (
        ResultLog(broker, topics.results) as log,
        running_worker(config, broker, tiny_llama_dir),
    ):
        await log.wait_for(expected, timeout=60)
        await asyncio.sleep(0.5)  # one commit interval after the last acknowledgement

    by_id = log.by_id()
    reference = make_engine(tiny_llama_dir).generate([
        GenerationRequest(id=r.request.id, prompt_token_ids=tuple(r.prompt_token_ids),
                          sampling=SamplingParams(max_tokens=r.request.max_tokens))
        for r in requests
    ])
    for request, want in zip(requests, reference, strict=True):
        (result,) = by_id[request.request.id]
        assert result.status == "ok", result
        assert result.token_ids == list(want.token_ids)
        assert result.text == want.text
        assert result.bin == request.bin
        assert result.worker == "w-a"
        assert result.metadata == {"n": request.request.id}
        assert result.usage.prompt_tokens == len(request.prompt_token_ids)
        t = result.timings
        assert (t.received, t.classified) == (1_700_000_000_000, 1_700_000_000_001)
        assert t.admitted <= t.first_token <= t.finished
    for result, headers in log.results:  # trace context passes through unchanged
        assert headers.get("traceparent") == traceparent(result.id)
    (long_result,) = by_id["too-long"]
    assert long_result.status == "error"
    assert long_result.error is not None and long_result.error.code
    (bad_result,) = by_id["no-prompt"]
    assert bad_result.status == "error"
    assert bad_result.error.code == "invalid_request"

    letters = [decode_dead_letter(r.value) for r in await read_records(broker, topics.dlq, 3)]
    assert sorted(str(letter.key) for letter in letters) == ["None", "no-prompt", "too-long"]
    assert all(letter.stage == "worker" for letter in letters)

    produced = {0: 4 + 1, 1: 4 + 2}  # requests + bad ones (bin 0: not json; 1: too-long, no-prompt)
    for bin, count in produced.items():
        committed, ends = await committed_and_end(broker, config.group_id(bin), topics.bin(bin),
                                                  count)
        assert committed == ends, f"bin {bin}: committed {committed}, end {ends}"


async def test_full_worker_pauses_re_pauses_after_rebalance_and_serves_everything(
    broker: str, unique_prefix: str, create_topics, tiny_llama_dir: Path
):
    topics = TopicsConfig(prefix=unique_prefix, num_bins=1, bin_partitions=2)
    await create_topics(topics)
    requests = [binned(f"q{i}", 0, prompt_ids(i), max_tokens=4 + i % 5) for i in range(12)]
    await produce_binned(broker, topics, requests)

    config = WorkerConfig(bins=(0,), topic_prefix=unique_prefix, worker_id="full",
                          max_in_flight=2, max_poll_records=8, commit_interval_s=0.2)
    gated = GatedEngine(AsyncEngine(make_engine(tiny_llama_dir)))
    most_in_flight = 0
    async with (
        ResultLog(broker, topics.results) as log,
        running_worker(config, broker, tiny_llama_dir, gated) as worker,
    ):
        async def watch() -> None:
            nonlocal most_in_flight
            while True:
                most_in_flight = max(most_in_flight, worker.in_flight)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        consumer = worker._consumers[0]
        await wait_for(lambda: consumer.pauses >= 1, 20, "the full worker to pause")
        assert consumer.consumer.paused() == consumer.consumer.assignment()
        # A second member joins: the group rebalances while the first worker is full.
        other = WorkerConfig(bins=(0,), topic_prefix=unique_prefix, worker_id="other",
                             commit_interval_s=0.2)
        pauses = consumer.pauses
        async with running_worker(other, broker, tiny_llama_dir):
            # The rebalance dropped what was not publishing (redelivered from the last
            # commit); the worker fills up again with what it was given and pauses again.
            await wait_for(lambda: worker.in_flight == 2 and consumer.pauses > pauses, 20,
                           "a pause after the rebalance")
            assert consumer.consumer.paused() == consumer.consumer.assignment()
            assert worker.in_flight == 2
            gated.gate.set()
            await log.wait_for({r.request.id for r in requests}, timeout=60)
            await asyncio.sleep(0.5)
        watcher.cancel()

    assert most_in_flight == 2
    by_id = log.by_id()
    assert all(result.status == "ok" for results in by_id.values() for result in results)
    assert {result.worker for results in by_id.values() for result in results} == {
        "full", "other"}
    committed, ends = await committed_and_end(broker, config.group_id(0), topics.bin(0),
                                              len(requests))
    assert committed == ends


async def test_a_revoked_partitions_requests_are_aborted_and_the_new_owner_answers_them(
    broker: str, unique_prefix: str, create_topics, tiny_llama_dir: Path
):
    topics = TopicsConfig(prefix=unique_prefix, num_bins=1, bin_partitions=2)
    await create_topics(topics)
    requests = [binned(f"long{i}", 0, prompt_ids(i), max_tokens=300, ignore_eos=True)
                for i in range(8)]
    ids = {r.request.id for r in requests}
    slow = make_engine(tiny_llama_dir)
    step = slow.step

    def slow_step() -> list[GenerationOutput]:  # ~6 s per request: all in flight at the join
        time.sleep(0.02)
        return step()

    slow.step = slow_step  # type: ignore[method-assign]
    first_engine = AsyncEngine(slow)
    first = WorkerConfig(bins=(0,), topic_prefix=unique_prefix, worker_id="first",
                         commit_interval_s=0.2)
    second = WorkerConfig(bins=(0,), topic_prefix=unique_prefix, worker_id="second",
                          commit_interval_s=0.2)
    async with (
        ResultLog(broker, topics.results) as log,
        running_worker(first, broker, tiny_llama_dir, first_engine) as worker,
    ):
        await produce_binned(broker, topics, requests)
        await wait_for(lambda: worker.in_flight == len(requests), 20, "all in flight")
        assert len(worker._consumers[0].consumer.assignment()) == 2
        async with running_worker(second, broker, tiny_llama_dir):
            await log.wait_for(ids, timeout=90)
            await asyncio.sleep(1.0)  # time for a duplicate to show up, if one were sent
        assert worker.aborted > 0  # the partition that moved: aborted in the engine
        assert slow.stats.retired < len(requests)  # the aborted never finished there

    by_id = log.by_id()
    assert set(by_id) == ids  # none lost
    assert all(len(results) == 1 for results in by_id.values()), "a duplicate result"
    assert all(results[0].status == "ok" for results in by_id.values())
    assert sum(results[0].worker == "second" for results in by_id.values()) >= worker.aborted
    cache = slow.cache
    assert cache.allocator.num_free == cache.num_blocks  # aborted requests freed theirs
    assert first_engine.num_pending == 0


# -- worker processes -------------------------------------------------------------------


class WorkerProcess:
    """``binbaton worker`` with its stdout read line by line."""

    def __init__(self, bootstrap: str, prefix: str, bins: str, model_dir: Path,
                 worker_id: str, log_path: Path, *extra: str) -> None:
        command = [
            sys.executable, "-m", CLI_MODULE, "worker",
            "--bootstrap-servers", bootstrap, "--topic-prefix", prefix, "--bins", bins,
            "--model", str(model_dir), "--worker-id", worker_id, "--commit-interval", "0.2",
            "--session-timeout-ms", str(SESSION_TIMEOUT_MS),
            "--heartbeat-interval-ms", str(HEARTBEAT_MS), "--tracing", "false",
            "--log-level", "INFO", *extra,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in wait())
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._log,
                                        text=True, env=env)

    async def wait_ready(self, timeout: float = 60) -> str:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), timeout)
        assert line.startswith("worker ready "), (
            f"worker said {line!r}; log:\n{self.log_path.read_text()}")
        return line.strip()

    async def wait(self, timeout: float) -> int:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.process.wait), timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._log.close()


@pytest.mark.slow
async def test_killed_worker_requests_are_finished_after_restart(
    broker: str, unique_prefix: str, create_topics, tiny_llama_dir: Path, tmp_path: Path
):
    topics = TopicsConfig(prefix=unique_prefix, num_bins=1, bin_partitions=2)
    await create_topics(topics)
    # One short request to know the worker is serving; long ones still decoding at the kill.
    short = binned("short", 0, prompt_ids(0), max_tokens=1)
    long = [binned(f"long{i}", 0, prompt_ids(i + 1), max_tokens=400, ignore_eos=True)
            for i in range(6)]
    ids = {r.request.id for r in [short, *long]}

    async with ResultLog(broker, topics.results) as log:
        first = WorkerProcess(broker, unique_prefix, "0", tiny_llama_dir, "first",
                              tmp_path / "first.log")
        try:
            assert await first.wait_ready() == "worker ready id=first bins=0"
            await produce_binned(broker, topics, [short, *long])
            await log.wait_for({"short"}, timeout=30)
        finally:
            first.kill()  # SIGKILL: no drain, no commit, no goodbye to the group
        unfinished = ids - log.ids()
        assert unfinished, "every request finished before the kill; the test proves nothing"

        # The restarted worker (in this process: no second torch import) joins the same
        # group once the dead member's session expired and reads from the last commit.
        restarted = WorkerConfig(bins=(0,), topic_prefix=unique_prefix, worker_id="second")
        async with running_worker(restarted, broker, tiny_llama_dir):
            await log.wait_for(ids, timeout=60)

    by_id = log.by_id()
    assert set(by_id) == ids  # no id lost
    for request_id in unfinished:
        assert any(r.worker == "second" and r.status == "ok" for r in by_id[request_id])
    for results in by_id.values():  # duplicates are allowed; they agree
        assert all(r.status == "ok" and r.token_ids == results[0].token_ids for r in results)


async def test_sigterm_drains_in_flight_requests_and_exits_zero(
    broker: str, unique_prefix: str, create_topics, tiny_llama_dir: Path, tmp_path: Path
):
    topics = TopicsConfig(prefix=unique_prefix, num_bins=1, bin_partitions=2)
    await create_topics(topics)
    short = binned("short", 0, prompt_ids(0), max_tokens=1)
    long = [binned(f"long{i}", 0, prompt_ids(i + 1), max_tokens=300, ignore_eos=True)
            for i in range(4)]
    ids = {r.request.id for r in [short, *long]}

    async with ResultLog(broker, topics.results) as log:
        worker = WorkerProcess(broker, unique_prefix, "0", tiny_llama_dir, "drainer",
                               tmp_path / "drainer.log", "--drain-timeout", "40")
        try:
            await worker.wait_ready()
            await produce_binned(broker, topics, [short, *long])
            await log.wait_for({"short"}, timeout=30)
            worker.process.send_signal(signal.SIGTERM)
            in_flight_at_signal = ids - log.ids()
            started = time.monotonic()
            assert await worker.wait(timeout=45) == 0
            drain_s = time.monotonic() - started
        finally:
            worker.kill()
        assert in_flight_at_signal, "nothing was in flight at SIGTERM; the test proves nothing"
        assert drain_s < 40
        await log.wait_for(ids, timeout=10)  # published before the process exited

    assert all(len(results) == 1 and results[0].status == "ok"
               for results in log.by_id().values())
    committed, ends = await committed_and_end(broker, f"{unique_prefix}.worker.bin-0",
                                              topics.bin(0), len(ids))
    assert committed == ends, "drained requests must be committed"


async def test_missing_topics_fail_clearly(broker: str, unique_prefix: str, tiny_llama_dir: Path,
                                           caplog: pytest.LogCaptureFixture):
    config = WorkerConfig(bins=(0,), topic_prefix=unique_prefix)
    worker = Worker(config, kafka_config(broker), AsyncEngine(make_engine(tiny_llama_dir)))
    assert await asyncio.wait_for(worker.run(asyncio.Event()), 30) == 1
    assert f"topics {unique_prefix}.bin.0, {unique_prefix}.dlq, {unique_prefix}.results " \
           "do not exist" in caplog.text
