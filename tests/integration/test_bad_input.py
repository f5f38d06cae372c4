"""Bad input of every kind through the real broker, interleaved with valid requests, in one
pipeline (a classifier and a worker on the tiny checkpoint): each kind ends as exactly one
dead letter and, when its id is recoverable, an error result with its code; every valid
request is served; nothing dies (README's "Messages").

Kinds aimed at the classifier go to the requests topic; kinds aimed at the worker (which
decodes bin messages itself) go straight to a bin topic.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer
from binbaton.schemas.codec import decode_dead_letter, encode
from binbaton.schemas.messages import DeadLetter, Request
from binbaton.service.classifier.config import ClassifierConfig
from binbaton.service.classifier.service import DEAD_LETTER_RAW_LIMIT, Classifier
from binbaton.service.kafka.client import ResultFollower
from binbaton.service.kafka.config import KafkaConfig
from binbaton.service.kafka.topics import TopicsConfig, create_service_topics
from binbaton.workers.config import WorkerConfig
from binbaton.workers.engine.async_engine import AsyncEngine
from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.engine import Engine
from binbaton.workers.worker import serve
from helpers.kafka import read_records

MAX_REQUEST_BYTES = 1_200_000  # room for a prompt over the codec's 2^20 characters
DEEP = b"[" * 10_000 + b"]" * 10_000
DEEP_OBJECT = b'{"a":' * 10_000 + b"1" + b"}" * 10_000


@dataclass(frozen=True)
class Kind:
    name: str
    key: bytes | None
    value: bytes | None  # None: a tombstone
    request_id: str | None  # the id an error result must carry (None: none expected)
    code: str
    to_worker: bool = False  # sent to bin 0 instead of the requests topic


def req(rid: str, **fields: object) -> bytes:
    """A request as JSON with the given fields (anything, valid or not)."""
    body: dict[str, object] = {"id": rid, "prompt": "the quick brown fox", "max_tokens": 3}
    body.update(fields)
    return json.dumps(body).encode()


def raw(rid: str, tail: bytes) -> bytes:
    """A request whose last field is given as raw bytes (what json.dumps cannot write)."""
    return b'{"id": "' + rid.encode() + b'", "prompt": "hi", ' + tail + b"}"


def binned(rid: str, **request_fields: object) -> bytes:
    request = {"id": rid, "prompt_token_ids": [5, 6, 7], "max_tokens": 3, **request_fields}
    tokens = request.get("prompt_token_ids", [5, 6, 7])
    return json.dumps({"request": request, "prompt_token_ids": tokens, "predicted_tokens": 3,
                       "bin": 0, "received": 1, "classified": 2}).encode()


def classifier_kinds() -> list[Kind]:
    def k(name: str, value: bytes | None, rid: str | None, code: str,
          key: bytes | None = None) -> Kind:
        return Kind(name, key, value, rid, code)

    stops = [f"s{i}" for i in range(17)]
    metadata = {f"k{i}": "v" for i in range(65)}
    return [
        # nesting, checked on the raw bytes before any decoder
        k("deep metadata", req("c-deep-meta")[:-1] + b', "metadata": ' + DEEP + b"}",
          "c-deep-meta", "too_deep"),
        k("deep unknown field", req("c-deep-unknown")[:-1] + b', "x": ' + DEEP_OBJECT + b"}",
          "c-deep-unknown", "too_deep"),
        k("deep top-level array", DEEP, None, "too_deep"),
        k("deep top-level array, keyed", DEEP + b" ", "c-deep-keyed", "too_deep",
          key=b"c-deep-keyed"),
        k("17 levels in an unknown field",
          raw("c-17", b'"m": ' + b"[" * 17 + b"]" * 17), "c-17", "too_deep"),
        k("deep, unterminated", raw("c-deep-open", b'"m": ' + b"[" * 5000)[:-1],
          "c-deep-open", "too_deep"),
        # integers the engine's types cannot hold
        k("seed 2^64", req("c-seed64", seed=2**64, temperature=0.8), "c-seed64",
          "out_of_range"),
        k("seed 2^63", req("c-seed63", seed=2**63), "c-seed63", "out_of_range"),
        k("seed below -2^63", req("c-seedneg", seed=-(2**63) - 1), "c-seedneg", "out_of_range"),
        k("seed of 5000 digits", raw("c-seed-digits", b'"seed": ' + b"9" * 5000),
          "c-seed-digits", "invalid_request"),
        k("top_k 2^70, temperature > 0", req("c-topk70", top_k=2**70, temperature=0.7),
          "c-topk70", "out_of_range"),
        k("top_k 2^31", req("c-topk31", top_k=2**31, temperature=0.7), "c-topk31",
          "out_of_range"),
        k("top_k negative", req("c-topkneg", top_k=-1), "c-topkneg", "invalid_request"),
        k("max_tokens 2^70", req("c-max70", max_tokens=2**70), "c-max70",
          "max_tokens_too_large"),
        k("max_tokens over the server limit", req("c-max49", max_tokens=49), "c-max49",
          "max_tokens_too_large"),
        k("max_tokens zero", req("c-max0", max_tokens=0), "c-max0", "invalid_request"),
        k("max_tokens negative", req("c-maxneg", max_tokens=-5), "c-maxneg", "invalid_request"),
        k("token id 2^40", req("c-tok40", prompt=None, prompt_token_ids=[5, 2**40]),
          "c-tok40", "out_of_range"),
        k("token id negative", req("c-tokneg", prompt=None, prompt_token_ids=[-1]),
          "c-tokneg", "invalid_request"),
        k("token id outside the vocabulary", req("c-vocab", prompt=None,
                                                 prompt_token_ids=[5, 999_999]),
          "c-vocab", "token_out_of_range"),
        k("temperature 1e999", raw("c-tempinf", b'"temperature": 1e999'), "c-tempinf",
          "invalid_request"),
        k("temperature negative", req("c-tempneg", temperature=-1), "c-tempneg",
          "invalid_request"),
        k("NaN literal", raw("c-nan", b'"temperature": NaN'), "c-nan", "invalid_json"),
        k("top_p zero", req("c-topp0", top_p=0), "c-topp0", "invalid_request"),
        k("top_p over one", req("c-topp2", top_p=1.5), "c-topp2", "invalid_request"),
        # empty, tombstone, encodings
        k("empty value", b"", None, "invalid_json"),
        k("empty value, keyed", b"", "c-empty-keyed", "invalid_json", key=b"c-empty-keyed"),
        k("tombstone", None, "c-tombstone", "invalid_json", key=b"c-tombstone"),
        k("whitespace only", b"  \n ", None, "invalid_json"),
        k("byte-order mark", b"\xef\xbb\xbf" + req("c-bom"), "c-bom", "invalid_json"),
        k("UTF-16", req("c-utf16").decode().encode("utf-16"), None, "invalid_json"),
        k("invalid UTF-8 in the prompt", raw("c-badutf8", b'"stop": ["\xff\xfe"]'),
          "c-badutf8", "invalid_json"),
        k("encoded surrogate bytes", raw("c-cesu", b'"stop": ["\xed\xa0\x80"]'), "c-cesu",
          "invalid_json"),
        k("lone surrogate escape", raw("c-surrogate", b'"stop": ["\\ud800"]'),
          "c-surrogate", "invalid_json"),
        k("lone surrogate in the id", b'{"id": "\\udc00x", "prompt": "hi"}', None,
          "invalid_json"),
        k("raw NUL in a string", raw("c-nul", b'"stop": ["a\x00"]'), "c-nul",
          "invalid_json"),
        k("not utf-8 at all", b"\xff\xfe\x00\x01", None, "invalid_json"),
        k("truncated JSON", req("c-trunc")[:-5], "c-trunc", "invalid_json"),
        k("trailing garbage", req("c-trail") + b" garbage", "c-trail", "invalid_json"),
        # sizes
        k("prompt over 2^20 characters", req("c-bigprompt", prompt="a" * (2**20 + 1)),
          "c-bigprompt", "field_too_large"),
        k("message over --max-request-bytes",
          req("c-huge", prompt="a b " * (MAX_REQUEST_BYTES // 4 + 10)), "c-huge",
          "message_too_large"),
        k("17 stop strings", req("c-stops", stop=stops), "c-stops", "field_too_large"),
        k("a stop string of 257 characters", req("c-stoplong", stop=["s" * 257]),
          "c-stoplong", "field_too_large"),
        k("65 metadata entries", req("c-meta65", metadata=metadata), "c-meta65",
          "field_too_large"),
        k("a metadata value of 4097 characters", req("c-metaval", metadata={"k": "v" * 4097}),
          "c-metaval", "field_too_large"),
        k("a metadata key of 257 characters", req("c-metakey", metadata={"k" * 257: "v"}),
          "c-metakey", "field_too_large"),
        # wrong types and shapes
        k("nested metadata", req("c-metanest", metadata={"a": {"b": "c"}}), "c-metanest",
          "invalid_request"),
        k("metadata value a number", req("c-metanum", metadata={"a": 1}), "c-metanum",
          "invalid_request"),
        k("metadata a list", req("c-metalist", metadata=["a"]), "c-metalist",
          "invalid_request"),
        k("stop a number", req("c-stopnum", stop=5), "c-stopnum", "invalid_request"),
        k("stop holding a number", req("c-stopitem", stop=["a", 5]), "c-stopitem",
          "invalid_request"),
        k("an empty stop string", req("c-stopempty", stop=[""]), "c-stopempty",
          "invalid_request"),
        k("max_tokens a string", req("c-maxstr", max_tokens="ten"), "c-maxstr",
          "invalid_request"),
        k("max_tokens a float", req("c-maxfloat", max_tokens=3.5), "c-maxfloat",
          "invalid_request"),
        k("max_tokens a bool", req("c-maxbool", max_tokens=True), "c-maxbool",
          "invalid_request"),
        k("seed a float", req("c-seedfloat", seed=1.5), "c-seedfloat", "invalid_request"),
        k("ignore_eos a string", req("c-eos", ignore_eos="yes"), "c-eos", "invalid_request"),
        k("temperature a string", req("c-tempstr", temperature="hot"), "c-tempstr",
          "invalid_request"),
        k("prompt a list", req("c-promptlist", prompt=["a", "b"]), "c-promptlist",
          "invalid_request"),
        k("prompt_token_ids nested", req("c-idsnest", prompt=None, prompt_token_ids=[[1, 2]]),
          "c-idsnest", "invalid_request"),
        k("prompt_token_ids empty", req("c-idsempty", prompt=None, prompt_token_ids=[]),
          "c-idsempty", "invalid_request"),
        k("prompt empty", req("c-promptempty", prompt=""), "c-promptempty",
          "invalid_request"),
        k("neither prompt", req("c-neither", prompt=None), "c-neither", "invalid_request"),
        k("both prompts", req("c-both", prompt_token_ids=[5]), "c-both", "invalid_request"),
        k("unknown field", req("c-unknown", tempreature=1), "c-unknown", "invalid_request"),
        k("id a number", b'{"id": 5, "prompt": "hi"}', None, "invalid_request"),
        k("id a number, keyed", b'{"id": 6, "prompt": "hi"}', "c-idnum-keyed",
          "invalid_request", key=b"c-idnum-keyed"),
        k("id empty", b'{"id": "", "prompt": "hi"}', None, "invalid_request"),
        k("id of 129 characters", req("x" * 129), None, "invalid_request"),
        k("missing id", b'{"prompt": "hello"}', None, "invalid_request"),
        k("missing id, keyed", b'{"prompt": "hello"}', "c-noid-keyed", "invalid_request",
          key=b"c-noid-keyed"),
        k("JSON null", b"null", None, "invalid_request"),
        k("JSON number", b"42", None, "invalid_request"),
        k("JSON string", b'"hello"', None, "invalid_request"),
        k("JSON array", b'[{"id": "c-inarray", "prompt": "hi"}]', None, "invalid_request"),
        k("JSON true", b"true", None, "invalid_request"),
        # keys
        k("duplicate id key, two values", b'{"id": "c-dupa", "prompt": "hi", "id": "c-dupb"}',
          None, "invalid_request"),
        k("duplicate prompt key", raw("c-dupprompt", b'"prompt": "again"'), "c-dupprompt",
          "invalid_request"),
        k("duplicate metadata key", raw("c-dupmeta", b'"metadata": {"a": "1", "a": "2"}'),
          "c-dupmeta", "invalid_request"),
        k("key is not the id", req("c-keyid"), "c-keyid", "key_mismatch", key=b"other-key"),
        k("key not UTF-8", req("c-keybytes"), "c-keybytes", "key_mismatch", key=b"\xff\xfe"),
        # the model's limits
        k("prompt longer than the context", req("c-ctx", prompt=None,
                                                prompt_token_ids=[5] * 512),
          "c-ctx", "prompt_too_long"),
        k("prompt + max_tokens over the context",
          req("c-over", prompt=None, prompt_token_ids=[5] * 500, max_tokens=40), "c-over",
          "too_long"),
    ]


def worker_kinds() -> list[Kind]:
    def w(name: str, value: bytes | None, rid: str | None, code: str) -> Kind:
        return Kind(f"bin message: {name}", rid.encode() if rid else None, value, rid, code,
                    to_worker=True)

    return [
        w("deep", binned("w-deep")[:-1] + b', "x": ' + DEEP + b"}", "w-deep", "too_deep"),
        w("seed 2^64", binned("w-seed", seed=2**64, temperature=0.8), "w-seed", "out_of_range"),
        w("top_k 2^70", binned("w-topk", top_k=2**70, temperature=0.8), "w-topk",
          "out_of_range"),
        w("max_tokens 2^70", binned("w-max", max_tokens=2**70), "w-max",
          "max_tokens_too_large"),
        w("token id 2^40", binned("w-tok40", prompt_token_ids=[5, 2**40]), "w-tok40",
          "out_of_range"),
        w("token id outside the vocabulary", binned("w-vocab", prompt_token_ids=[5, 5000]),
          "w-vocab", "token_out_of_range"),
        w("predicted_tokens 2^70", binned("w-pred").replace(b'"predicted_tokens": 3',
                                                            b'"predicted_tokens": ' +
                                                            str(2**70).encode()),
          "w-pred", "out_of_range"),
        w("truncated", binned("w-trunc")[:-3], "w-trunc", "invalid_json"),
        w("tombstone", None, "w-tomb", "invalid_json"),
        w("not a bin message", req("w-plain"), "w-plain", "invalid_request"),
        w("duplicate key", binned("w-dupkey")[:-1] + b', "bin": 0}', "w-dupkey",
          "invalid_request"),
    ]


def valid_requests() -> list[tuple[bytes | None, bytes]]:
    """Valid requests, edge values among them; every one must be answered ok."""
    plain = [Request(id=f"ok-{i}", prompt="the quick brown fox", max_tokens=1 + i % 6)
             for i in range(40)]
    edges = [
        Request(id="ok-seed-max", prompt="hi", max_tokens=3, temperature=0.8, seed=2**63 - 1),
        Request(id="ok-seed-min", prompt="hi", max_tokens=3, temperature=0.8, seed=-(2**63)),
        Request(id="ok-topk-max", prompt="hi", max_tokens=3, temperature=0.9, top_k=2**31 - 1),
        Request(id="ok-stops", prompt="hi", max_tokens=3, stop=[f"s{i}" for i in range(16)]),
        Request(id="ok-meta", prompt="hi", max_tokens=3,
                metadata={f"k{i}": "v" * 64 for i in range(64)}),
        Request(id="ok-emoji", prompt="snow \U0001f600 \u00e9t\u00e9 \u4e2d", max_tokens=3),
        Request(id="ok-ids", prompt_token_ids=[5, 6, 7], max_tokens=3),
    ]
    messages: list[tuple[bytes | None, bytes]] = [(r.id.encode(), encode(r)) for r in plain]
    messages += [(r.id.encode(), encode(r)) for r in edges]
    messages.append((None, encode(Request(id="ok-nokey", prompt="no key", max_tokens=2))))
    return messages


@contextlib.asynccontextmanager
async def pipeline(kafka: KafkaConfig, topics: TopicsConfig, model: Path
                   ) -> AsyncIterator[tuple[Classifier, list[asyncio.Task[object]]]]:
    await create_service_topics(kafka.bootstrap_servers, topics)
    config = ClassifierConfig(model=str(model), bin_edges=(16,), predictor="max_tokens",
                              max_tokens_limit=48, max_request_bytes=MAX_REQUEST_BYTES,
                              batch_size=32)
    classifier = Classifier(kafka, topics, config)
    stop, started = asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task[object]] = [asyncio.create_task(classifier.run(stop, started))]
    engine = AsyncEngine(Engine(EngineConfig(model=str(model), max_batch=16,
                                             kernel_backend="torch")))
    worker = WorkerConfig(bins=(0, 1), topic_prefix=topics.prefix, worker_id="w0",
                          commit_interval_s=0.2)
    tasks.append(asyncio.create_task(serve(worker, engine, kafka, stop)))
    await asyncio.wait_for(started.wait(), 30)
    try:
        yield classifier, tasks
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)


async def test_every_kind_of_bad_input_is_dead_lettered_and_answered_and_nothing_dies(
    broker: str, unique_prefix: str, tiny_llama_dir: Path
) -> None:
    kinds = classifier_kinds() + worker_kinds()
    assert len(kinds) >= 60 and len({k.name for k in kinds}) == len(kinds)
    kafka = KafkaConfig(bootstrap_servers=broker, session_timeout_ms=4000,
                        heartbeat_interval_ms=400)
    topics = TopicsConfig(prefix=unique_prefix, num_bins=2)
    valid = valid_requests()
    valid_ids = [json.loads(value)["id"] for _, value in valid]
    # A different request under an id still being generated: one ok, one duplicate_id.
    reused = [binned("w-reused", max_tokens=40, ignore_eos=True),
              binned("w-reused", prompt_token_ids=[9, 9], max_tokens=2)]

    async with pipeline(kafka, topics, tiny_llama_dir) as (classifier, tasks):
        async with ResultFollower(kafka, topics.results) as follower:
            producer = AIOKafkaProducer(bootstrap_servers=broker, enable_idempotence=False,
                                        max_request_size=4 << 20)
            await producer.start()
            try:
                # Interleaved: a valid request, then a bad one, one at a time.
                good = iter(valid)
                for kind in kinds:
                    key, value = next(good, (None, None))
                    if value is not None:
                        await producer.send_and_wait(topics.requests, value, key=key)
                    topic = topics.bin(0) if kind.to_worker else topics.requests
                    await producer.send_and_wait(topic, kind.value, key=kind.key)
                for key, value in good:
                    await producer.send_and_wait(topics.requests, value, key=key)
                acks = [await producer.send(topics.bin(0), value, key=b"w-reused")
                        for value in reused]
                await asyncio.gather(*acks)
            finally:
                await producer.stop()
            expected_ids = valid_ids + [k.request_id for k in kinds if k.request_id]
            results = await follower.collect([*expected_ids, "w-reused"], timeout=120)
            await asyncio.sleep(1.0)  # a second result for w-reused, or any stray one
            await follower.poll()
        records = await read_records(broker, topics.dlq, 1,
                                     lambda r: len(r) >= len(kinds) + 1, timeout=30)
        await asyncio.sleep(0.5)
        assert all(not task.done() for task in tasks), [t for t in tasks if t.done()]
        rejected = classifier.stats.rejected

    letters = [decode_dead_letter(record.value) for record in records]
    missing = [i for i in [*expected_ids, "w-reused"] if i not in results]
    assert not missing, f"no result for {missing}"

    # Every valid request served.
    assert [i for i in valid_ids if results[i].status != "ok"] == []

    # Per kind: its error result with its code (when the id is recoverable) …
    wrong = {k.name: (results[k.request_id].status,
                      results[k.request_id].error and results[k.request_id].error.code)
             for k in kinds if k.request_id
             and (results[k.request_id].error is None
                  or results[k.request_id].error.code != k.code)}
    assert wrong == {}, wrong
    # … and exactly one dead letter with the raw bytes, the code, the id and the stage.
    expected_letters = Counter(
        (base64.b64encode((k.value or b"")[:DEAD_LETTER_RAW_LIMIT]).decode(), k.code,
         k.request_id, "worker" if k.to_worker else "classifier") for k in kinds)
    reused_letters = [x for x in letters if x.key == "w-reused"]
    found = Counter((x.raw, x.error.code, x.key, x.stage) for x in letters
                    if x.key != "w-reused")
    assert found == expected_letters, (
        f"unexpected: {list((found - expected_letters).elements())[:3]}; "
        f"missing: {[(c, i, s) for (_, c, i, s) in (expected_letters - found).elements()]}")
    assert all(isinstance(x, DeadLetter) for x in letters)
    assert rejected == sum(not k.to_worker for k in kinds)

    # The reused id: the first request served, the different second one refused.
    reused_results = sorted((r.status, r.error.code if r.error else None)
                            for r in follower.received if r.id == "w-reused")
    assert reused_results == [("error", "duplicate_id"), ("ok", None)], reused_results
    assert [x.error.code for x in reused_letters] == ["duplicate_id"]
    served = next(r for r in follower.received if r.id == "w-reused" and r.status == "ok")
    assert len(served.token_ids) == 40  # the first request's, not the second's 2
