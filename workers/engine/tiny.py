"""Tiny random Llama-family checkpoints with a real tokenizer, built offline (tests, benchmarks).

``save_tiny_checkpoint(path, arch)`` writes what a Hugging Face model directory holds:
config.json, model.safetensors, tokenizer files and generation_config.json (EOS ids).
The weights are random (seeded); the tokenizer is a byte-level BPE trained in a second.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # ids 0, 1, 2
ARCHS: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3")

SAMPLE_TEXT = """\
Kafka carries the requests; the classifier predicts how long each answer will be and
routes it to a bin. Workers decode with continuous batching: when a sequence finishes,
a waiting request is prefilled on its own and its keys and values are inserted into the
running batch. The quick brown fox jumps over the lazy dog. Pack my box with five dozen
liquor jugs. How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow.
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000; punctuation , . ; : ! ? ( ) [ ] { } " ' - _ / \\.
Write a short poem about the sea. Summarize the following article in three sentences.
Translate to French: the weather is nice today. What is the capital of Portugal?
"""


# A chat template in the usual shape (special tokens around each turn, the assistant's
# header as the generation prompt) that, like many real ones, refuses a late system turn.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' and not loop.first %}"
    "{{ raise_exception('a system message must come first') }}{% endif %}"
    "{{ '" + BOS + "' + m['role'] + '\\n' + m['content'] + '" + EOS + "\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + BOS + "assistant\\n' }}{% endif %}"
)


def build_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: tuple[str, str, str] = SPECIAL_TOKENS,
    prepend_bos: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts``; ``special_tokens`` = (pad, bos, eos) get ids 0/1/2.

    With ``prepend_bos`` encoding starts every text with the bos token.
    """
    pad, bos, eos = special_tokens
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if prepend_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, 1)]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos,
                                   pad_token=pad)


def tiny_config(arch: str, vocab_size: int, **overrides: Any) -> PretrainedConfig:
    """A small config of the given architecture; ``overrides`` replace any field."""
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        # Larger than the usual 0.02 so random logits are peaky (no greedy near-ties).
        initializer_range=0.2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    if arch == "llama":  # Llama-3 style rope scaling
        common["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 128,
        }
        common["rope_theta"] = 10000.0
        config_cls: type[PretrainedConfig] = LlamaConfig
    elif arch == "mistral":  # GQA; window no smaller than the context
        common.update(num_key_value_heads=2, sliding_window=512)
        config_cls = MistralConfig
    elif arch == "qwen2":  # q/k/v bias, tied embeddings
        common.update(num_key_value_heads=2, tie_word_embeddings=True)
        config_cls = Qwen2Config
    elif arch == "qwen3":  # q/k norm, explicit head_dim (heads * head_dim != hidden)
        common.update(num_key_value_heads=2, head_dim=32)
        config_cls = Qwen3Config
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; choose one of {ARCHS}")
    common.update(overrides)
    return config_cls(**common)


def save_tiny_checkpoint(
    path: str | Path, arch: str = "llama", seed: int = 0, chat_template: str | None = None,
    **overrides: Any,
) -> Path:
    """Write a random tiny ``arch`` checkpoint + tokenizer + generation_config to ``path``
    (the tokenizer with ``chat_template`` when given, e.g. ``TINY_CHAT_TEMPLATE``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer([SAMPLE_TEXT] * 4, vocab_size=overrides.pop("vocab_size", 1000))
    tokenizer.chat_template = chat_template
    config = tiny_config(arch, vocab_size=len(tokenizer), **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)  # float32
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=[config.eos_token_id],
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
