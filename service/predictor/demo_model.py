"""The demo model: a small Llama trained on the instruction corpus so answer lengths vary.

No weights can be downloaded, so the demo serves a model trained here, on the CPU, for a few
minutes. It only needs to learn roughly when to stop for each kind of prompt (GSM8K worked
answers, role-play replies, one-line toolformer calls), which makes the length predictor and
the bins meaningful end to end. Sequences are ``<s> prompt "\\n\\n" response </s>``; the loss
covers the separator, the response and the end-of-sequence token, not the prompt.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from binbaton.service.predictor.corpus import Example, split_examples
from binbaton.workers.engine.tiny import build_tokenizer as train_bpe
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

SEPARATOR = "\n\n"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2


@dataclass(frozen=True)
class DemoModelConfig:
    """Defaults: the committed demo model's shape (``service/artifacts/demo-model``)."""

    vocab_size: int = 4096
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 3
    num_heads: int = 3
    num_kv_heads: int = 1
    max_seq_len: int = 256
    batch_size: int = 16
    learning_rate: float = 3e-3
    train_seconds: float = 600.0  # wall-clock budget for the optimisation loop
    threads: int = 2
    seed: int = 0
    eos_loss_weight: float = 1.0  # > 1 stresses learning where answers end

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if min(self.vocab_size, self.max_seq_len, self.batch_size, self.num_layers) < 1:
            raise ValueError("sizes must be positive")
        if self.train_seconds <= 0 or self.learning_rate <= 0 or self.eos_loss_weight <= 0:
            raise ValueError("train_seconds, learning_rate and eos_loss_weight must be positive")


def build_tokenizer(texts: Sequence[str], vocab_size: int):  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer trained on ``texts``; encoding prepends ``<s>``."""
    return train_bpe(texts, vocab_size, special_tokens=SPECIAL_TOKENS, prepend_bos=True)


def encode_example(tokenizer, example: Example, max_seq_len: int) -> tuple[list[int], int]:
    """(token ids of the whole sequence, index of the first supervised position)."""
    prompt_ids = tokenizer(example.prompt).input_ids  # starts with <s>
    answer_ids = tokenizer(SEPARATOR + example.response, add_special_tokens=False).input_ids
    ids = prompt_ids + answer_ids + [tokenizer.eos_token_id]
    return ids[:max_seq_len], len(prompt_ids)


def make_batches(encoded: list[tuple[list[int], int]], batch_size: int, rng: random.Random):
    """Length-bucketed batches (little padding), in random order."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(encoded: list[tuple[list[int], int]], indices: list[int]):

    width = max(len(encoded[i][0]) for i in indices)
    input_ids = torch.zeros(len(indices), width, dtype=torch.long)  # [B, T], pad id 0
    labels = torch.full((len(indices), width), -100, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros(len(indices), width, dtype=torch.long)
    for row, i in enumerate(indices):
        ids, first = encoded[i]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, first : len(ids)] = torch.tensor(ids[first:])
    return input_ids, attention_mask, labels


def weighted_loss(logits, labels, eos_token_id: int, eos_weight: float):
    """Next-token cross-entropy over supervised positions, end-of-sequence weighted."""

    logits = logits[:, :-1].float()  # [B, T-1, V]: position t predicts token t+1
    targets = labels[:, 1:]  # [B, T-1], -100 where not supervised
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )  # [B*(T-1)], 0 at ignored positions
    flat = targets.reshape(-1)
    weights = (flat != -100).float() * (1 + (eos_weight - 1) * (flat == eos_token_id).float())
    return (per_token * weights).sum() / weights.sum()


def llama_config(config: DemoModelConfig, tokenizer):

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=2 * config.max_seq_len,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def train_demo_model(
    examples: Sequence[Example],
    out_dir: Path,
    config: DemoModelConfig,
    init_dir: Path | None = None,
    log=print,
) -> dict:
    """Train tokenizer + model on the training split; save HF format to ``out_dir``.

    With ``init_dir`` (a model this function saved), training continues from it, with its
    tokenizer and shape (the shape fields of ``config`` are then ignored).
    """

    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = random.Random(config.seed)
    train, _ = split_examples(examples)
    if init_dir is None:
        texts = [ex.prompt + SEPARATOR + ex.response for ex in train]
        tokenizer = build_tokenizer(texts, config.vocab_size)
        model = LlamaForCausalLM(llama_config(config, tokenizer))
    else:
        tokenizer = AutoTokenizer.from_pretrained(init_dir)
        model = LlamaForCausalLM.from_pretrained(init_dir, dtype=torch.float32)
    encoded = [encode_example(tokenizer, ex, config.max_seq_len) for ex in train]
    log(
        f"demo model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{len(encoded)} training sequences"
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    warmup = 50
    model.train()
    started = time.monotonic()
    step, epochs, loss_ema = 0, 0.0, None
    while time.monotonic() - started < config.train_seconds:
        batches = make_batches(encoded, config.batch_size, rng)
        for done, indices in enumerate(batches):
            elapsed = time.monotonic() - started
            if elapsed >= config.train_seconds:
                epochs += done / len(batches)
                break
            # linear warm-up, then cosine decay over the wall-clock budget
            progress = elapsed / config.train_seconds
            scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress))
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * max(scale, 0.02)
            input_ids, attention_mask, labels = collate(encoded, indices)
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            loss = weighted_loss(logits, labels, tokenizer.eos_token_id, config.eos_loss_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
            step += 1
            if step % 50 == 0:
                log(
                    f"step {step} epoch {int(epochs)} loss {loss_ema:.3f} "
                    f"({time.monotonic() - started:.0f}s)"
                )
        else:
            epochs += 1
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    # transformers' decorators hide PreTrainedModel.to's signature from mypy
    model.to(torch.bfloat16).save_pretrained(  # type: ignore[arg-type]
        out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=config.max_seq_len,
    ).save_pretrained(out_dir)
    summary = {
        "steps": step,
        "epochs": round(epochs, 2),
        "final_loss": loss_ema,
        "seconds": round(time.monotonic() - started, 1),
    }
    record = {**summary, "config": vars(config)}
    if init_dir is not None and (init_dir / "training.json").exists():
        record["continued_from"] = json.loads((init_dir / "training.json").read_text())
    (out_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return summary


def generated_lengths(
    model_dir: Path,
    examples: Sequence[Example],
    max_new_tokens: int,
    temperature: float = 0.0,
    batch_size: int = 16,
) -> list[int]:
    """Completion length (tokens, EOS counted) of each prompt with HF generate.

    temperature 0 is greedy; above 0, pure sampling at that temperature (seeded)."""

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    torch.manual_seed(0)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_k": 0}
        if temperature > 0
        else {"do_sample": False}
    )
    lengths: list[int] = []
    for start in range(0, len(examples), batch_size):
        prompts = [ex.prompt for ex in examples[start : start + batch_size]]
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, **sampling)
        new_tokens = out[:, batch.input_ids.shape[1] :]  # [B, <=max_new_tokens]
        for row in new_tokens.tolist():
            eos = row.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in row else None
            lengths.append(eos + 1 if eos is not None else len(row))
    return lengths
