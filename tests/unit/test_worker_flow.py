"""The worker's flow control and commit rules, with a stand-in consumer and engine (a unit seam;
tests/integration/test_worker.py runs the same paths through the real broker and engine)."""

import asyncio
import tempfile

from aiokafka import ConsumerRecord, TopicPartition
from binbaton.schemas.codec import decode_dead_letter, decode_result, encode
from binbaton.schemas.messages import BinnedRequest, Request
from binbaton.service.kafka.attempts import MessageKey
from binbaton.workers.config import WorkerConfig
from binbaton.workers.consumer import BinConsumer
from binbaton.workers.engine.request import GenerationOutput
from binbaton.workers.worker import Worker
from helpers.fakes import FakeConsumer, FakeProducer, consumer_record

TP0 = TopicPartition("p.bin.0", 0)
TP1 = TopicPartition("p.bin.0", 1)


class ManualEngine:
    """Finishes a request only when the test says so."""

    def __init__(self) -> None:
        self.futures: dict[str, asyncio.Future[GenerationOutput]] = {}
        self.submitted: list[str] = []
        self.aborted: list[str] = []

    async def start(self) -> None: ...

    async def stop(self, timeout: float | None = None) -> None: ...

    def submit(self, request):
        self.submitted.append(request.id)
        future = asyncio.get_running_loop().create_future()
        self.futures[request.id] = future
        return future

    def abort(self, request_id: str) -> bool:
        future = self.futures.get(request_id)
        if future is None or future.done():
            return False
        future.cancel()
        self.aborted.append(request_id)
        return True

    def finish(self, request_id: str) -> None:
        self.futures[request_id].set_result(GenerationOutput(
            id=request_id, token_ids=(4, 5), text="ab", finish_reason="length", prompt_tokens=1,
            finished_at=1.0,
        ))


def record(
    tp: TopicPartition, offset: int, request_id: str, value: bytes | None = None
) -> ConsumerRecord:
    if value is None:
        value = encode(BinnedRequest(
            request=Request(id=request_id, prompt_token_ids=[1], max_tokens=2),
            prompt_token_ids=[1], predicted_tokens=2, bin=0, received=1, classified=2,
        ))
    return consumer_record(tp, offset, request_id, value, [("traceparent", b"00-t")])


def make_worker(max_in_flight: int, assigned=(TP0, TP1)):
    engine = ManualEngine()
    config = WorkerConfig(bins=(0,), topic_prefix="p", max_in_flight=max_in_flight,
                          state_dir=tempfile.mkdtemp(prefix="attempts-"))
    worker = Worker(config, kafka=None, engine=engine)
    consumer = FakeConsumer(set(assigned))
    bin_consumer = BinConsumer(worker, 0, consumer)
    worker._producer = FakeProducer()
    worker._consumers.append(bin_consumer)
    return worker, bin_consumer, consumer, engine


async def settle() -> None:
    for _ in range(5):  # the attempt records are written in a thread
        await asyncio.sleep(0.01)


async def test_take_stops_at_the_bound_and_seeks_back():
    worker, bin_consumer, consumer, engine = make_worker(max_in_flight=2)
    worker._take(bin_consumer, {TP0: [record(TP0, 0, "a"), record(TP0, 1, "b"),
                                      record(TP0, 2, "c")],
                                TP1: [record(TP1, 7, "d")]})
    await settle()
    assert worker.in_flight == 2
    assert engine.submitted == ["a", "b"]
    assert consumer.seeks == [(TP0, 2), (TP1, 7)]  # handed back, fetched again later
    assert worker.is_full()


async def test_records_of_revoked_partitions_are_not_taken():
    worker, bin_consumer, _, engine = make_worker(max_in_flight=4, assigned=(TP1,))
    worker._take(bin_consumer, {TP0: [record(TP0, 0, "a")]})
    await settle()
    assert worker.in_flight == 0
    assert engine.submitted == []


async def test_out_of_order_completion_commits_up_to_lowest_unacknowledged():
    worker, bin_consumer, consumer, engine = make_worker(max_in_flight=8)
    worker._take(bin_consumer, {TP0: [record(TP0, 0, "a"), record(TP0, 1, "b"),
                                      record(TP0, 2, "c")]})
    await settle()
    engine.finish("b")
    engine.finish("c")
    await settle()
    assert worker.in_flight == 1
    await bin_consumer.commit()
    assert consumer.commits == [{TP0: 0}]  # "a" still in flight
    engine.finish("a")
    await settle()
    await bin_consumer.commit()
    assert consumer.commits[-1] == {TP0: 3}
    results = [sent for sent in worker._producer.sent if sent[0] == "p.results"]
    assert [key for _, _, key, _ in results] == [b"b", b"c", b"a"]
    assert all(headers == [("traceparent", b"00-t")] for _, _, _, headers in results)


async def test_assignment_while_full_is_paused_again():
    worker, bin_consumer, consumer, engine = make_worker(max_in_flight=1)
    worker._take(bin_consumer, {TP0: [record(TP0, 0, "a")]})
    await settle()
    await bin_consumer.on_partitions_assigned({TP0, TP1})
    assert consumer.paused() == {TP0, TP1}
    assert (bin_consumer.pauses, bin_consumer.repauses) == (1, 1)
    assert bin_consumer.joined.is_set()
    engine.finish("a")
    await settle()
    await bin_consumer.on_partitions_assigned({TP0})
    assert bin_consumer.pauses == 1  # not full any more: left running


async def test_pause_all_and_resume_all():
    _, bin_consumer, consumer, _ = make_worker(max_in_flight=1)
    bin_consumer.pause_all()
    bin_consumer.pause_all()
    assert consumer.paused() == {TP0, TP1}
    assert bin_consumer.pauses == 1
    bin_consumer.resume_all()
    assert consumer.paused() == set()


async def test_revoke_commits_acknowledged_then_forgets_partitions():
    worker, bin_consumer, consumer, engine = make_worker(max_in_flight=8)
    worker._take(bin_consumer, {TP0: [record(TP0, 0, "a"), record(TP0, 1, "b")],
                                TP1: [record(TP1, 0, "c")]})
    await settle()
    engine.finish("a")
    await settle()
    await bin_consumer.on_partitions_revoked({TP0})
    assert consumer.commits == [{TP0: 1}]
    assert bin_consumer.tracker.partitions == {TP1}
    # "b" was still decoding: dropped at once (the new owner answers it), and aborted in
    # the engine once the assignment shows TP0 went elsewhere.
    assert worker.in_flight == 1 and engine.aborted == []
    await bin_consumer.on_partitions_assigned({TP1})
    assert engine.aborted == ["b"] and worker.aborted == 1
    await settle()
    assert [key for _, _, key, _ in worker._producer.sent] == [b"a"]  # nothing for "b"
    await bin_consumer.commit()
    assert consumer.commits[-1] == {TP1: 0}
    assert worker.in_flight == 1


async def test_a_request_of_a_partition_assigned_back_is_not_aborted_but_shared():
    worker, bin_consumer, consumer, engine = make_worker(max_in_flight=8)
    worker._take(bin_consumer, {TP0: [record(TP0, 0, "a")]})
    await settle()
    await bin_consumer.on_partitions_revoked({TP0, TP1})
    await bin_consumer.on_partitions_assigned({TP0})  # back to us: redelivered from 0
    assert engine.aborted == [] and worker.in_flight == 0
    worker._take(bin_consumer, {TP0: [record(TP0, 0, "a")]})
    await settle()
    assert engine.submitted == ["a"]  # the redelivered message shares the engine request
    engine.finish("a")
    await settle()
    assert [key for _, _, key, _ in worker._producer.sent] == [b"a"]  # one result
    await bin_consumer.commit()
    assert consumer.commits[-1] == {TP0: 1}


async def test_failed_commit_is_retried_next_time():
    worker, bin_consumer, consumer, engine = make_worker(max_in_flight=8)
    worker._take(bin_consumer, {TP0: [record(TP0, 0, "a")]})
    await settle()
    engine.finish("a")
    await settle()
    consumer.fail_commit = True
    await bin_consumer.commit()
    assert consumer.commits == []
    consumer.fail_commit = False
    await bin_consumer.commit()
    assert consumer.commits == [{TP0: 1}]


async def test_redelivered_id_in_flight_shares_the_engine_request():
    worker, bin_consumer, consumer, engine = make_worker(max_in_flight=8)
    worker._take(bin_consumer, {TP0: [record(TP0, 0, "a"), record(TP0, 1, "a")]})
    await settle()
    assert engine.submitted == ["a"]
    engine.finish("a")
    await settle()
    assert worker.in_flight == 0
    await bin_consumer.commit()
    assert consumer.commits == [{TP0: 2}]


async def test_a_different_request_under_an_id_in_flight_gets_duplicate_id():
    worker, bin_consumer, consumer, engine = make_worker(max_in_flight=8)
    other = encode(BinnedRequest(
        request=Request(id="a", prompt_token_ids=[7, 8], max_tokens=2),
        prompt_token_ids=[7, 8], predicted_tokens=2, bin=0, received=1, classified=2,
    ))
    worker._take(bin_consumer, {TP0: [record(TP0, 0, "a"), record(TP0, 1, "a", other)]})
    await settle()
    assert engine.submitted == ["a"]  # the second never reaches the engine
    sent = [(topic, decode_result(value) if topic == "p.results" else None)
            for topic, value, _, _ in worker._producer.sent]
    results = [result for topic, result in sent if result is not None]
    assert [topic for topic, _ in sent] == ["p.dlq", "p.results"]
    assert results[0].error is not None and results[0].error.code == "duplicate_id"
    engine.finish("a")
    await settle()
    first = decode_result(worker._producer.sent[-1][1])
    assert first.status == "ok" and first.token_ids == [4, 5]
    await bin_consumer.commit()
    assert consumer.commits == [{TP0: 2}]


async def test_bad_payload_is_dead_lettered_with_error_result_and_committed():
    worker, bin_consumer, consumer, engine = make_worker(max_in_flight=8)
    bad = record(TP0, 0, "x", value=b'{"request": {"id": "x"}, "bin": 0}')
    garbage = record(TP0, 1, "y", value=b"\xff not json")
    worker._take(bin_consumer, {TP0: [bad, garbage]})
    await settle()
    topics = [(topic, key) for topic, _, key, _ in worker._producer.sent]
    # The garbage's id comes from its message key.
    assert sorted(topics, key=str) == sorted(
        [("p.dlq", b"x"), ("p.results", b"x"), ("p.dlq", b"y"), ("p.results", b"y")], key=str)
    await bin_consumer.commit()
    assert consumer.commits == [{TP0: 2}]
    assert engine.submitted == []


async def test_unexpected_error_answers_the_request_and_keeps_commits_moving(monkeypatch):
    worker, bin_consumer, consumer, engine = make_worker(max_in_flight=8)

    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr("binbaton.workers.worker.build_result", broken)
    worker._take(bin_consumer, {TP0: [record(TP0, 0, "a")]})
    await settle()
    engine.finish("a")
    await settle()
    sent = {(topic, key) for topic, _, key, _ in worker._producer.sent}
    assert sent == {("p.dlq", b"a"), ("p.results", b"a")}
    await bin_consumer.commit()
    assert consumer.commits == [{TP0: 1}]


async def test_drain_waits_for_in_flight_then_commits():
    worker, bin_consumer, consumer, engine = make_worker(max_in_flight=8)
    worker._take(bin_consumer, {TP0: [record(TP0, 0, "a"), record(TP0, 1, "b")]})
    await settle()
    asyncio.get_running_loop().call_later(0.05, engine.finish, "a")
    asyncio.get_running_loop().call_later(0.1, engine.finish, "b")
    await worker._drain()
    assert consumer.commits == [{TP0: 2}]
    assert worker.in_flight == 0


async def test_drain_timeout_leaves_unfinished_uncommitted():
    worker, bin_consumer, consumer, engine = make_worker(max_in_flight=8)
    worker.config = WorkerConfig(bins=(0,), topic_prefix="p", drain_timeout_s=0.1)
    worker._take(bin_consumer, {TP0: [record(TP0, 0, "a"), record(TP0, 1, "b")]})
    await settle()
    engine.finish("b")
    started = asyncio.get_running_loop().time()
    await worker._drain()
    assert asyncio.get_running_loop().time() - started < 1.0
    assert consumer.commits == [{TP0: 0}]  # "a" never finished: redelivered to the next owner
    assert worker.in_flight == 0  # its task was cancelled
    assert engine.aborted == ["a"]  # and its request aborted in the engine
    assert worker.journal.attempts(MessageKey(TP0.topic, 0, 0)) == 0  # not a crash


async def test_second_signal_skips_the_drain():
    worker, bin_consumer, consumer, _ = make_worker(max_in_flight=8)
    worker._take(bin_consumer, {TP0: [record(TP0, 0, "a")]})
    await settle()
    worker._abort.set()
    started = asyncio.get_running_loop().time()
    await worker._drain()  # drain_timeout_s is 30 s
    assert asyncio.get_running_loop().time() - started < 1.0
    assert consumer.commits == [{TP0: 0}]


# ---- messages in flight when a worker died -------------------------------------------


async def test_a_message_its_workers_died_on_max_attempts_times_is_dead_lettered_as_poison():
    worker, bin_consumer, consumer, engine = make_worker(max_in_flight=8)
    for _ in range(3):  # three earlier workers took it into their engine, then died
        worker.journal.begin(MessageKey(TP0.topic, 0, 0))
    worker._take(bin_consumer, {TP0: [record(TP0, 0, "p"), record(TP0, 1, "ok")]})
    await settle()
    assert engine.submitted == ["ok"]  # the poison never runs again
    letters = [decode_dead_letter(v) for t, v, _, _ in worker._producer.sent if t == "p.dlq"]
    results = [decode_result(v) for t, v, _, _ in worker._producer.sent if t == "p.results"]
    assert [(d.key, d.error.code) for d in letters] == [("p", "poison")]
    assert [(r.id, r.error.code) for r in results] == [("p", "poison")]
    assert worker.journal.attempts(MessageKey(TP0.topic, 0, 0)) == 0  # answered: forgotten
    engine.finish("ok")
    await settle()
    await bin_consumer.commit()
    assert consumer.commits == [{TP0: 2}]


async def test_a_message_in_flight_at_a_death_runs_alone_and_counts_each_attempt():
    worker, bin_consumer, consumer, engine = make_worker(max_in_flight=8)
    suspect = MessageKey(TP0.topic, 0, 1)
    worker.journal.begin(suspect)
    worker._take(bin_consumer, {TP0: [record(TP0, 0, "a"), record(TP0, 1, "s"),
                                      record(TP0, 2, "b")]})
    await settle()
    assert engine.submitted == ["a"]  # "s" waits for the engine to empty; "b" waits for "s"
    assert worker.journal.attempts(MessageKey(TP0.topic, 0, 0)) == 1
    engine.finish("a")
    await settle()
    assert engine.submitted == ["a", "s"]
    assert worker.journal.attempts(suspect) == 2  # counted before it entered the engine
    engine.finish("s")
    await settle()
    assert engine.submitted == ["a", "s", "b"]
    assert worker.journal.attempts(suspect) == 0
    engine.finish("b")
    await settle()
    await bin_consumer.commit()
    assert consumer.commits == [{TP0: 3}]
