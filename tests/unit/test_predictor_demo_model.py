"""The committed demo model: small, loadable, and its answer length depends on the prompt."""

import pytest
import torch
from binbaton.service.app.commands.train_predictor import DEMO_MODEL_DIR
from transformers import AutoModelForCausalLM, AutoTokenizer

TOOL_PROMPT = (
    "toolformer: enabled\ntoolformer access: wikipedia\nA wrapper around Wikipedia. Useful for "
    "when you need to display general information about people, places, companies, historical "
    "events, or other subjects found in an encyclopedia, displays a snippet summary of the "
    "topic. Input should be a search query.\nwikipedia(query)\nTell me about Marie Curie."
)
ROLEPLAY_PROMPT = (
    "Imagine you are a ship captain in the 18th century writing a letter to your family. "
    "Describe the storm you survived last week and how your crew kept the ship afloat."
)


def completion_lengths(model, tokenizer, prompts: list[str]) -> list[int]:
    """Sampled completion length of each prompt (one left-padded batch)."""
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=128, do_sample=True, temperature=0.8, top_k=0)
    lengths = []
    for row in out[:, batch.input_ids.shape[1] :].tolist():  # [len(prompts), <= 128]
        eos = tokenizer.eos_token_id
        lengths.append(row.index(eos) + 1 if eos in row else len(row))
    return lengths


def test_demo_model_is_small_and_complete():
    files = {path.name: path.stat().st_size for path in DEMO_MODEL_DIR.iterdir()}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert name in files
    assert sum(files.values()) < 20_000_000


@pytest.fixture
def one_thread():
    """HF generate of a tiny model: 1 thread (2 spin against each other on a busy CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_demo_model_answers_a_tool_call_shorter_than_a_role_play(one_thread):
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR, dtype=torch.float32).eval()
    assert model.config.model_type == "llama"
    assert tokenizer("hi").input_ids[0] == tokenizer.bos_token_id
    lengths = completion_lengths(model, tokenizer, [TOOL_PROMPT] * 8 + [ROLEPLAY_PROMPT] * 8)
    tool, story = lengths[:8], lengths[8:]
    assert sum(tool) / len(tool) < 0.6 * sum(story) / len(story), (tool, story)
