"""The committed demo model: small, loadable, and its answer length depends on the prompt."""

import torch
from binbaton.service.training import DEMO_MODEL_DIR
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


def completion_lengths(model, tokenizer, prompt: str, samples: int) -> list[int]:
    batch = tokenizer([prompt] * samples, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=160, do_sample=True, temperature=0.8, top_k=0)
    lengths = []
    for row in out[:, batch.input_ids.shape[1] :].tolist():  # [samples, <= 160]
        eos = tokenizer.eos_token_id
        lengths.append(row.index(eos) + 1 if eos in row else len(row))
    return lengths


def test_demo_model_is_small_and_complete():
    files = {path.name: path.stat().st_size for path in DEMO_MODEL_DIR.iterdir()}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert name in files
    assert sum(files.values()) < 20_000_000


def test_demo_model_answers_a_tool_call_shorter_than_a_role_play():
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR, dtype=torch.float32).eval()
    assert model.config.model_type == "llama"
    assert tokenizer("hi").input_ids[0] == tokenizer.bos_token_id
    tool = completion_lengths(model, tokenizer, TOOL_PROMPT, samples=8)
    story = completion_lengths(model, tokenizer, ROLEPLAY_PROMPT, samples=8)
    assert sum(tool) / len(tool) < 0.6 * sum(story) / len(story), (tool, story)
