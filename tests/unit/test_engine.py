"""Engine behaviour through a real tiny checkpoint: insertion, finish reasons, bad requests,
configuration and loading errors."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.engine import Engine
from binbaton.workers.engine.kv_cache import KVBudgetError
from binbaton.workers.engine.request import GenerationRequest, SamplingParams
from binbaton.workers.engine.tiny import save_tiny_checkpoint
from transformers import GenerationConfig


def make_request(rid: str, prompt_len: int = 8, start: int = 5, **sampling) -> GenerationRequest:
    prompt = tuple(range(start, start + prompt_len))
    return GenerationRequest(id=rid, prompt_token_ids=prompt, sampling=SamplingParams(**sampling))


def make_engine(checkpoint: Path, **overrides) -> Engine:
    settings = dict(model=str(checkpoint), policy="insert", max_batch=4, kv_budget_tokens=2048)
    return Engine(EngineConfig(**(settings | overrides)))


# ---- insertion ----------------------------------------------------------------------


def test_insertion_refills_the_batch_the_step_after_a_retirement(tiny_llama_dir):
    engine = make_engine(tiny_llama_dir, max_batch=4)
    lengths = [3, 9, 5, 12, 4, 7, 6, 8, 10, 2]
    for i, n in enumerate(lengths):
        engine.add(make_request(f"q{i}", start=5 + i, max_tokens=n, ignore_eos=True))
    steps = []
    while engine.has_work():
        engine.step()
        steps.append(engine.last_step)
    refills = 0
    for before, after in itertools.pairwise(steps):
        if before.retired and before.waiting:
            assert after.admitted == min(before.retired, before.waiting)
            assert after.decode_tokens == 4  # occupancy back to full, newcomers included
            refills += 1
    assert refills >= 3
    assert engine.stats.retired == len(lengths)
    assert engine.stats.generated_tokens == sum(lengths)
    assert engine.cache.allocator.num_free == engine.cache.num_blocks  # all blocks back


def test_padding_rows_write_only_the_scratch_block(tiny_llama_dir):
    engine = make_engine(tiny_llama_dir, max_batch=4)  # 3 sequences: a bucket of 4 rows
    cache = engine.cache
    assert cache.scratch_block == cache.num_blocks  # past every block the allocator owns
    for t in (*cache.k, *cache.v):
        t[cache.scratch_block].fill_(7.0)  # a padding row writes its slot 0 (position 0)
    for i in range(3):
        engine.add(make_request(f"p{i}", start=5 + i, max_tokens=6, ignore_eos=True))
    for _ in range(3):
        engine.step()
        assert engine.last_step.decode_tokens == 3
    owned = {b for s in engine.running for b in s.blocks}
    untouched = [b for b in range(cache.num_blocks) if b not in owned]
    assert untouched
    for t in (*cache.k, *cache.v):
        assert (t[cache.scratch_block, 0] != 7.0).all()  # the padding row wrote here
        assert (t[cache.scratch_block, 1:] == 7.0).all()
        assert t[untouched].abs().sum() == 0  # and nowhere else


def test_static_policy_never_refills_a_running_batch(tiny_llama_dir):
    engine = make_engine(tiny_llama_dir, policy="static", max_batch=4)
    for i, n in enumerate([3, 9, 5, 12, 4, 7]):
        engine.add(make_request(f"q{i}", start=5 + i, max_tokens=n, ignore_eos=True))
    admitted_while_running = 0
    while engine.has_work():
        running_before = len(engine.running)
        engine.step()
        admitted_while_running += int(running_before > 0 and engine.last_step.admitted > 0)
    assert admitted_while_running == 0
    assert engine.stats.retired == 6


# ---- finish reasons -----------------------------------------------------------------


def greedy_tokens(engine: Engine, n: int) -> list[int]:
    out = engine.generate([make_request("probe", max_tokens=n, ignore_eos=True)])[0]
    return list(out.token_ids)


def test_finish_reason_eos_from_generation_config(tiny_llama_dir, tmp_path):
    probe = greedy_tokens(make_engine(tiny_llama_dir), 12)
    eos = probe[5]
    index = probe.index(eos)  # its first occurrence ends the sequence
    checkpoint = Path(shutil.copytree(tiny_llama_dir, tmp_path / "ckpt"))
    GenerationConfig(eos_token_id=[eos], pad_token_id=0).save_pretrained(checkpoint)
    engine = make_engine(checkpoint)
    assert engine.eos_token_ids == frozenset([eos])
    stop, ignore = engine.generate([
        make_request("eos", max_tokens=12),
        make_request("ignore", max_tokens=12, ignore_eos=True),
    ])
    assert stop.finish_reason == "stop"
    assert list(stop.token_ids) == probe[: index + 1]  # EOS is the last token
    assert ignore.finish_reason == "length"
    assert list(ignore.token_ids) == probe


def test_finish_reason_stop_string_is_cut_from_the_text(tiny_llama_dir):
    engine = make_engine(tiny_llama_dir)
    full = engine.generate([make_request("full", max_tokens=30, ignore_eos=True)])[0]
    text = full.text
    cut = next(k for k in range(4, len(text) - 3) if text.find(text[k : k + 3]) == k)
    stop = text[cut : cut + 3]
    out = engine.generate([make_request("stopped", max_tokens=30, stop=(stop,))])[0]
    assert out.finish_reason == "stop"
    assert out.text == text[:cut]
    assert stop not in out.text
    assert len(out.token_ids) < 30
    assert list(out.token_ids) == list(full.token_ids[: len(out.token_ids)])


def test_stop_strings_are_checked_on_a_tail_of_the_tokens(tiny_llama_dir, monkeypatch):
    engine = make_engine(tiny_llama_dir)
    decoded: list[int] = []  # lengths of the token lists decoded
    decode = engine.tokenizer.decode
    monkeypatch.setattr(engine.tokenizer, "decode",
                        lambda ids, **kw: decoded.append(len(ids)) or decode(ids, **kw))
    stop = "never\x00"
    out = engine.generate([make_request("s", max_tokens=60, ignore_eos=True, stop=(stop,))])[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 60
    assert decoded[-1] == 60  # the output's text, once
    assert len(decoded) == 61 and max(decoded[:-1]) <= len(stop.encode()) + 4


def test_finish_reason_length(tiny_llama_dir):
    out = make_engine(tiny_llama_dir).generate([make_request("n", max_tokens=7, ignore_eos=True)])
    assert out[0].finish_reason == "length"
    assert len(out[0].token_ids) == 7
    assert out[0].prompt_tokens == 8
    assert out[0].admitted_at <= out[0].first_token_at <= out[0].finished_at


# ---- unservable requests ------------------------------------------------------------


def test_oversized_and_bad_requests_get_errors_and_the_rest_is_served(tiny_llama_dir):
    engine = make_engine(tiny_llama_dir, kv_budget_tokens=256, block_size=16)
    requests = [
        make_request("ok1", max_tokens=5),
        make_request("context", prompt_len=500, max_tokens=100),  # > 512 context
        make_request("budget", prompt_len=200, max_tokens=100),  # > 256 KV tokens
        GenerationRequest(id="empty", prompt_token_ids=()),
        GenerationRequest(id="vocab", prompt_token_ids=(10**6,)),
        make_request("ok2", max_tokens=5, start=20),
    ]
    outs = {o.id: o for o in engine.generate(requests)}
    assert {rid: o.error.code for rid, o in outs.items() if o.error} == {
        "context": "too_long",
        "budget": "kv_budget",
        "empty": "empty_prompt",
        "vocab": "token_out_of_range",
    }
    assert all(o.finish_reason == "error" for o in outs.values() if o.error)
    assert outs["ok1"].ok and len(outs["ok1"].token_ids) >= 1
    assert outs["ok2"].ok and len(outs["ok2"].token_ids) >= 1
    assert engine.stats.errors == 4


# ---- configuration and loading ------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("dtype", "int8"),
        ("policy", "fcfs"),
        ("kernel_backend", "cuda"),
        ("max_batch", 0),
        ("kv_budget_tokens", 0),
        ("bin_max_batch", (0,)),
        ("bin_max_batch", (99,)),
        ("block_size", 0),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        EngineConfig(model="m", **{field: value})


@pytest.mark.parametrize("max_batch, buckets", [
    (1, (1,)), (3, (1, 2, 3)), (8, (1, 2, 4, 8)), (20, (1, 2, 4, 8, 16, 20)),
    (40, (1, 2, 4, 8, 16, 24, 32, 40)),
])
def test_decode_buckets(max_batch, buckets):
    assert EngineConfig(model="m", max_batch=max_batch).decode_buckets == buckets


def test_config_rejects_two_budgets():
    with pytest.raises(ValueError, match="not both"):
        EngineConfig(model="m", kv_budget_tokens=10, kv_budget_bytes=10)


def test_capacity_follows_the_budget(tiny_llama_dir):
    by_tokens = make_engine(tiny_llama_dir, kv_budget_tokens=1000, block_size=16)
    assert by_tokens.cache.num_blocks == 1000 // 16
    # llama tiny: 2 layers x 4 kv heads x 16 dims x K,V x 4 bytes = 1024 bytes per token
    by_bytes = make_engine(tiny_llama_dir, kv_budget_tokens=None, kv_budget_bytes=64 * 1024)
    assert by_bytes.cache.num_blocks == 64 // 16
    default = make_engine(tiny_llama_dir, kv_budget_tokens=None, max_batch=3)
    assert default.cache.capacity_tokens == 3 * default.max_model_len


def test_a_budget_under_one_block_is_a_setting_to_fix(tiny_llama_dir):
    # llama tiny: 1024 bytes per token, so 10 KiB hold 10 tokens
    with pytest.raises(KVBudgetError, match="holds 10 tokens, less than one block of 16: give"):
        make_engine(tiny_llama_dir, kv_budget_tokens=None, kv_budget_bytes=10 * 1024,
                    block_size=16)
    assert KVBudgetError.exit_code == 2
    with pytest.raises(ValueError, match="kv_budget_tokens 10 holds less than one block"):
        EngineConfig(model="m", kv_budget_tokens=10, block_size=16)


def test_unsupported_architecture_is_named(tmp_path):
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 32,
              "n_layer": 1, "n_head": 2, "vocab_size": 50}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"gpt2.*supported: llama, mistral, qwen2, qwen3"):
        Engine(EngineConfig(model=str(tmp_path)))


def test_sliding_window_smaller_than_context_caps_the_context(tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / "m", arch="mistral", sliding_window=128)
    engine = make_engine(checkpoint)
    assert engine.max_model_len == 128
    out = engine.generate([make_request("long", prompt_len=100, max_tokens=50)])[0]
    assert out.error is not None and out.error.code == "too_long"
    with pytest.raises(ValueError, match="sliding window"):
        make_engine(checkpoint, max_model_len=256)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_dtypes_run(tiny_qwen3_dir, dtype):
    engine = make_engine(tiny_qwen3_dir, dtype=dtype)
    assert engine.cache.k[0].dtype == getattr(torch, dtype)
    outs = engine.generate([make_request(f"h{i}", start=5 + i, max_tokens=6) for i in range(3)])
    assert all(o.ok and 1 <= len(o.token_ids) <= 6 for o in outs)


# ---- policies -----------------------------------------------------------------------


def binned(rid: str, bin_: int, max_tokens: int, start: int = 5) -> GenerationRequest:
    return GenerationRequest(
        id=rid,
        prompt_token_ids=tuple(range(start, start + 6)),
        sampling=SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        bin=bin_,
        predicted_tokens=max_tokens,
    )


def test_multibin_static_forms_each_batch_from_one_bin(tiny_llama_dir):
    engine = make_engine(tiny_llama_dir, policy="multibin-static", max_batch=4)
    for i in range(9):
        engine.add(binned(f"m{i}", bin_=i % 3, max_tokens=3 + i, start=5 + i))
    batch_bins = []
    while engine.has_work():
        idle_before = not engine.running
        engine.step()
        assert len({s.request.bin for s in engine.running}) <= 1
        if idle_before and engine.last_step.admitted:
            batch_bins.append(engine.running[0].request.bin if engine.running else None)
    assert engine.stats.retired == 9
    assert batch_bins[:3] == [0, 1, 2]  # the oldest waiting request's bin goes next


def test_multibin_insert_caps_each_bin_and_reserves_by_prediction(tiny_llama_dir):
    engine = make_engine(tiny_llama_dir, policy="multibin-insert", max_batch=4,
                         bin_max_batch=(1, 4))
    for i in range(8):
        engine.add(binned(f"m{i}", bin_=i % 2, max_tokens=4 + i, start=5 + i))
    engine.step()
    assert [s.reserved_len for s in engine.running] == [
        s.prompt_len + s.request.predicted_tokens for s in engine.running
    ]
    while engine.has_work():
        assert sum(1 for s in engine.running if s.request.bin == 0) <= 1
        engine.step()
    assert engine.stats.retired == 8


def test_prefill_token_cap_spreads_admissions_over_steps(tiny_llama_dir):
    engine = make_engine(tiny_llama_dir, max_batch=4, max_prefill_tokens=50)
    for i in range(4):
        engine.add(make_request(f"p{i}", prompt_len=30, start=5 + i, max_tokens=8))
    engine.step()
    assert engine.last_step.admitted == 1
    assert engine.last_step.prefill_tokens == 30
    engine.step()
    assert engine.last_step.admitted == 1


# ---- abort --------------------------------------------------------------------------


def test_abort_mid_decode_frees_the_blocks_and_the_rest_match_hf(tiny_llama_dir, hf_reference):
    requests = [make_request(f"a{i}", prompt_len=6 + 5 * i, start=5 + i, max_tokens=12 + 3 * i)
                for i in range(4)]
    expected = hf_reference(tiny_llama_dir, requests)
    engine = make_engine(tiny_llama_dir, max_batch=4)
    for request in requests:
        engine.add(request)
    outputs = {}
    for _ in range(3):
        outputs.update((o.id, o) for o in engine.step())
    victim = next(s for s in engine.running if s.id == "a2")
    assert victim.num_generated > 1  # mid-decode
    held, free = len(victim.blocks), engine.cache.allocator.num_free
    assert engine.abort("a2")
    assert engine.cache.allocator.num_free == free + held  # back at once
    assert [s.id for s in engine.running] == ["a0", "a1", "a3"]
    outputs.update((o.id, o) for o in engine.step())
    assert engine.last_step.decode_tokens == 3  # its decode row is gone too
    while engine.has_work():
        outputs.update((o.id, o) for o in engine.step())
    assert sorted(outputs) == ["a0", "a1", "a3"]
    assert all(list(outputs[r].token_ids) == expected[r] for r in outputs)
    assert engine.cache.allocator.num_free == engine.cache.num_blocks
    assert not engine.abort("a2")  # gone


def test_abort_of_a_waiting_request_and_of_an_unknown_id(tiny_llama_dir):
    engine = make_engine(tiny_llama_dir, max_batch=1)
    engine.add(make_request("first", max_tokens=4, ignore_eos=True))
    engine.add(make_request("second", max_tokens=4, ignore_eos=True))
    engine.add(GenerationRequest(id="bad", prompt_token_ids=()))  # an error output, pending
    engine.step()
    assert [s.id for s in engine.waiting] == ["second"]
    assert engine.abort("second")
    assert not engine.abort("nobody")
    assert not engine.waiting
    outputs = []
    while engine.has_work():
        outputs += engine.step()
    assert [o.id for o in outputs] == ["first"]  # "bad" came out of the first step
    engine.add(GenerationRequest(id="bad2", prompt_token_ids=()))
    assert engine.abort("bad2")  # a pending error output is dropped too
    assert not engine.has_work()


# ---- a request whose forward raises -------------------------------------------------


class RaisesOnMarker:
    """The model, except that a forward over ``marker`` raises (fault injection)."""

    def __init__(self, model, marker: int):
        self.model = model
        self.marker = marker
        self.raised = 0

    def __call__(self, token_ids, *args, **kwargs):
        if bool((token_ids == self.marker).any()):
            self.raised += 1
            raise RuntimeError("injected fault")
        return self.model(token_ids, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_a_forward_that_raises_fails_only_its_request_and_the_rest_stay_exact(
        tiny_llama_dir, hf_reference):
    requests = [make_request(f"a{i}", prompt_len=6 + 5 * i, start=5 + i, max_tokens=12 + 3 * i)
                for i in range(4)]
    late = make_request("late", prompt_len=7, start=40, max_tokens=10)
    expected = hf_reference(tiny_llama_dir, [*requests, late])
    used = {t for r in [*requests, late] for t in (*r.prompt_token_ids, *expected[r.id])}
    marker = next(t for t in range(1, 1000) if t not in used)
    poison = GenerationRequest(id="poison", prompt_token_ids=(5, marker, 7),
                               sampling=SamplingParams(max_tokens=8))
    engine = make_engine(tiny_llama_dir, max_batch=8)
    engine.runner.model = faulty = RaisesOnMarker(engine.runner.model, marker)
    for request in requests:
        engine.add(request)
    outputs = {}
    for _ in range(3):
        outputs.update((o.id, o) for o in engine.step())
    engine.add(poison)  # joins a batch mid-decode: the whole step raises
    engine.add(late)
    while engine.has_work():
        outputs.update((o.id, o) for o in engine.step())
    assert outputs["poison"].error is not None
    assert outputs["poison"].error.code == "internal"
    assert "injected fault" in outputs["poison"].error.message
    assert faulty.raised >= 2  # in the batch, then alone
    assert sorted(outputs) == ["a0", "a1", "a2", "a3", "late", "poison"]
    assert all(list(outputs[r].token_ids) == expected[r] for r in outputs if r != "poison")
    assert engine.cache.allocator.num_free == engine.cache.num_blocks
    assert not engine.running and not engine.waiting


def test_a_forward_that_raises_alone_fails_that_request(tiny_llama_dir):
    engine = make_engine(tiny_llama_dir)
    engine.runner.model = RaisesOnMarker(engine.runner.model, 9)
    [out] = engine.generate([make_request("only", prompt_len=8, start=5, max_tokens=4)])
    assert out.error is not None and out.error.code == "internal"
    assert engine.cache.allocator.num_free == engine.cache.num_blocks
    [ok] = engine.generate([make_request("next", prompt_len=3, start=20, max_tokens=4)])
    assert ok.error is None and len(ok.token_ids) > 0  # the engine serves on


def test_a_request_the_engine_cannot_take_is_an_internal_error(tiny_llama_dir):
    engine = make_engine(tiny_llama_dir)
    odd = GenerationRequest(id="odd", prompt_token_ids=(5, "x", 7),  # type: ignore[arg-type]
                            sampling=SamplingParams(max_tokens=3))
    fine = make_request("fine", max_tokens=3)
    by_id = {o.id: o for o in engine.generate([odd, fine])}
    assert by_id["odd"].error is not None and by_id["odd"].error.code == "internal"
    assert by_id["fine"].ok and by_id["fine"].token_ids
