"""AsyncEngine: the step loop in its own thread, results resolved on the event loop."""

from __future__ import annotations

import asyncio

import pytest
from binbaton.workers.engine.async_engine import AsyncEngine
from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.engine import Engine
from binbaton.workers.engine.request import GenerationRequest, SamplingParams


def make_requests(n: int, max_tokens: int = 10) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            id=f"a{i}",
            prompt_token_ids=tuple(range(5 + i, 15 + 2 * i)),
            sampling=SamplingParams(max_tokens=max_tokens + i, ignore_eos=True),
        )
        for i in range(n)
    ]


def make_engine(checkpoint) -> Engine:
    return Engine(EngineConfig(model=str(checkpoint), policy="insert", max_batch=4))


async def test_async_engine_matches_the_sync_engine(tiny_mistral_dir):
    expected = make_engine(tiny_mistral_dir).generate(make_requests(6))
    engine = AsyncEngine(make_engine(tiny_mistral_dir))
    await engine.start()
    ticks = 0

    async def tick() -> None:  # the loop keeps running while the engine works
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    ticker = asyncio.create_task(tick())
    futures = [engine.submit(r) for r in make_requests(6)]
    assert engine.num_pending == 6
    outputs = await asyncio.wait_for(asyncio.gather(*futures), timeout=60)
    ticker.cancel()
    assert [o.token_ids for o in outputs] == [o.token_ids for o in expected]
    assert engine.num_pending == 0
    assert ticks > 0
    await engine.stop(timeout=5)
    with pytest.raises(RuntimeError):
        engine.submit(make_requests(1)[0])


async def test_stop_finishes_in_flight_work(tiny_mistral_dir):
    engine = AsyncEngine(make_engine(tiny_mistral_dir))
    await engine.start()
    futures = [engine.submit(r) for r in make_requests(3)]
    await engine.stop(timeout=60)
    assert all(f.done() and f.result().ok for f in futures)


async def test_stop_timeout_fails_unfinished_requests(tiny_mistral_dir):
    engine = AsyncEngine(make_engine(tiny_mistral_dir))
    await engine.start()
    future = engine.submit(make_requests(1, max_tokens=400)[0])
    await engine.stop(timeout=0)
    with pytest.raises(RuntimeError, match="stopped"):
        future.result()
    assert engine.num_pending == 0


async def test_abort_cancels_the_future_frees_the_cache_and_spares_the_rest(tiny_mistral_dir):
    # long enough that none of the four can finish while the test polls for "long" decoding
    requests = make_requests(4, max_tokens=300)
    long = GenerationRequest(id="long", prompt_token_ids=tuple(range(5, 20)),
                             sampling=SamplingParams(max_tokens=400, ignore_eos=True))
    expected = make_engine(tiny_mistral_dir).generate(requests)
    engine = AsyncEngine(make_engine(tiny_mistral_dir))
    await engine.start()
    doomed = engine.submit(long)
    futures = [engine.submit(r) for r in requests]
    while engine.engine.stats.decode_tokens < 10:  # "long" is decoding
        await asyncio.sleep(0.01)
    assert engine.abort("long")
    assert doomed.cancelled()
    assert engine.num_pending == 4
    assert not engine.abort("long")
    assert not engine.abort("unknown")
    outputs = await asyncio.wait_for(asyncio.gather(*futures), timeout=60)
    assert [o.token_ids for o in outputs] == [o.token_ids for o in expected]
    assert engine.num_pending == 0
    await engine.stop(timeout=5)
    cache = engine.engine.cache
    assert cache.allocator.num_free == cache.num_blocks
    assert engine.engine.stats.retired == 4  # "long" never finished
