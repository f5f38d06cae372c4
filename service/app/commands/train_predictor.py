"""``binbaton train-predictor``: train and evaluate length predictors; train the demo model.

    binbaton train-predictor [--data FILE] [--model DIR | --tokenizer DIR] [--out FILE]
    binbaton train-predictor demo-model [--data FILE] [--out DIR] [--seconds N]
    binbaton train-predictor demo-eval [--model DIR] [--per-source N]
    binbaton train-predictor bench-predict [--data FILE] [--requests N]
    binbaton train-predictor held-out > requests.jsonl   # then: binbaton predict < … > preds
    binbaton train-predictor score preds.jsonl [--model DIR]

Lengths are counted in tokens of the served model's tokenizer (``--model``/``--tokenizer``;
default: the committed demo model). The held-out split is fixed (``corpus.is_held_out``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from binbaton.service.classifier.bins import AdaptiveBinner, BinBoundaries
from binbaton.service.predictor.corpus import INSTRUCTIONS, load_examples, split_examples
from binbaton.service.predictor.demo_model import (
    DemoModelConfig,
    generated_lengths,
    train_demo_model,
)
from binbaton.service.predictor.interface import PredictionInput
from binbaton.service.predictor.learned import LearnedPredictor
from binbaton.service.predictor.registry import (
    ARTIFACTS,
    DEFAULT_ARTIFACT,
    load_default_predictor,
)
from binbaton.service.predictor.training import fit_length_model, length_counter, spearman

DEMO_MODEL_DIR = ARTIFACTS / "demo-model"


def demo_model_main(argv: list[str]) -> int:
    defaults = DemoModelConfig()
    parser = argparse.ArgumentParser(prog="binbaton train-predictor demo-model")
    parser.add_argument("--data", type=Path, default=INSTRUCTIONS)
    parser.add_argument("--out", type=Path, default=DEMO_MODEL_DIR)
    parser.add_argument("--seconds", type=float, default=defaults.train_seconds,
                        help="training wall-clock budget")
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--hidden-size", type=int, default=defaults.hidden_size)
    parser.add_argument("--intermediate-size", type=int, default=defaults.intermediate_size)
    parser.add_argument("--layers", type=int, default=defaults.num_layers)
    parser.add_argument("--heads", type=int, default=defaults.num_heads)
    parser.add_argument("--kv-heads", type=int, default=defaults.num_kv_heads)
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--init", type=Path, default=None, help="continue training this model")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--eos-loss-weight", type=float, default=defaults.eos_loss_weight)
    args = parser.parse_args(argv)
    config = DemoModelConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        train_seconds=args.seconds,
        threads=args.threads,
        learning_rate=args.learning_rate,
        seed=args.seed,
        eos_loss_weight=args.eos_loss_weight,
    )
    log = functools.partial(print, flush=True)
    summary = train_demo_model(load_examples(args.data), args.out, config, args.init, log)
    print(json.dumps(summary))
    return 0


def evaluate(predicted: np.ndarray, actual: np.ndarray,
             boundaries: BinBoundaries) -> dict[str, Any]:
    """MAE (tokens), Spearman, and how often the predicted bin is the actual one."""
    predicted_bins = np.array([boundaries.bin_of(int(p)) for p in predicted])
    actual_bins = np.array([boundaries.bin_of(int(a)) for a in actual])
    return {
        "mae": round(float(np.abs(predicted - actual).mean()), 2),
        "spearman": None if (rho := spearman(predicted, actual)) is None else round(rho, 4),
        "bin_accuracy": round(float((predicted_bins == actual_bins).mean()), 4),
    }


def train_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="binbaton train-predictor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=INSTRUCTIONS, help="JSONL (prompt, response)")
    parser.add_argument("--model", type=Path, default=None, help="served model (its tokenizer)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer dir (over --model)")
    parser.add_argument("--out", type=Path, default=DEFAULT_ARTIFACT, help="model file (.npz)")
    parser.add_argument("--bins", type=int, default=4, help="k equal-mass bins for bin accuracy")
    parser.add_argument("--l2", type=float, default=1.0)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--max-tokens", type=int, default=1024, help="requests' max_tokens")
    parser.add_argument("--report", type=Path, default=None, help="also write metrics JSON here")
    args = parser.parse_args(argv)
    tokenizer_dir = args.tokenizer or args.model or DEMO_MODEL_DIR
    if not Path(tokenizer_dir).exists():
        raise SystemExit(f"tokenizer {tokenizer_dir} not found: pass --model or --tokenizer")

    examples = load_examples(args.data)
    train, held_out = split_examples(examples)
    if not train or not held_out:
        raise SystemExit(f"{args.data}: need examples on both sides of the split")
    count = length_counter(Path(tokenizer_dir))
    train_lengths = count([ex.response for ex in train])
    held_out_lengths = count([ex.response for ex in held_out])

    model = fit_length_model([ex.prompt for ex in train], train_lengths, l2=args.l2,
                             iterations=args.iterations)
    boundaries = BinBoundaries.equal_mass(train_lengths.tolist(), args.bins)
    # measured through the predictor the classifier (and `binbaton predict`) uses
    predictor = LearnedPredictor(model)
    inputs = [PredictionInput(ex.prompt, (), args.max_tokens) for ex in held_out]
    predicted = np.array(predictor.predict(inputs))
    baseline = np.full(len(held_out), args.max_tokens)
    report = {
        "data": str(args.data),
        "tokenizer": str(tokenizer_dir),
        "train_examples": len(train),
        "held_out_examples": len(held_out),
        "bin_edges": list(boundaries.edges),
        "learned": evaluate(predicted, held_out_lengths, boundaries),
        "max_tokens": evaluate(baseline, held_out_lengths, boundaries),
    }
    model.info = {
        "tokenizer": Path(tokenizer_dir).name,
        "held_out": report["learned"],
        "bin_edges": report["bin_edges"],
        "observed": 0,
    }
    model.save(args.out)
    report["artifact"] = str(args.out)
    report["artifact_bytes"] = args.out.stat().st_size
    print(json.dumps(report, indent=2))
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def bench_main(argv: list[str]) -> int:
    """Requests/s of the classifier's decision path: features + predict + bin, batched."""
    parser = argparse.ArgumentParser(prog="binbaton train-predictor bench-predict")
    parser.add_argument("--data", type=Path, default=INSTRUCTIONS)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=256, help="requests per predict() call")
    parser.add_argument("--repeats", type=int, default=3, help="best of N timed passes")
    args = parser.parse_args(argv)
    prompts = [ex.prompt for ex in load_examples(args.data)]
    prompts = [prompts[i % len(prompts)] for i in range(args.requests)]
    inputs = [PredictionInput(prompt, (), 1024) for prompt in prompts]
    predictor = load_default_predictor()
    trained_edges = predictor.model.info.get("bin_edges")
    binner = AdaptiveBinner(BinBoundaries(tuple(trained_edges or (32, 64, 128))))
    predictor.predict(inputs[: args.batch])  # warm-up (allocations, power tables)
    timings = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for start in range(0, len(inputs), args.batch):
            batch = inputs[start : start + args.batch]
            binner.assign_batch(predictor.predict(batch))
        timings.append(time.perf_counter() - started)
    best = min(timings)
    result = {
        "requests": len(inputs),
        "batch": args.batch,
        "predictor": predictor.name,
        "requests_per_s": round(len(inputs) / best),
        "seconds": [round(t, 3) for t in timings],
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "bin_updates": binner.updates,
    }
    print(json.dumps(result))
    return 0


def demo_eval_main(argv: list[str]) -> int:
    """Mean greedy output length (HF generate) per prompt source, on held-out prompts."""
    parser = argparse.ArgumentParser(prog="binbaton train-predictor demo-eval")
    parser.add_argument("--data", type=Path, default=INSTRUCTIONS)
    parser.add_argument("--model", type=Path, default=DEMO_MODEL_DIR)
    parser.add_argument("--per-source", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    args = parser.parse_args(argv)
    _, held_out = split_examples(load_examples(args.data))
    count = length_counter(args.model)
    report = {}
    for source in sorted({ex.source for ex in held_out}):
        chosen = [ex for ex in held_out if ex.source == source][: args.per_source]
        generated = generated_lengths(args.model, chosen, args.max_new_tokens, args.temperature)
        report[source] = {
            "prompts": len(chosen),
            "generated_mean": round(float(np.mean(generated)), 1),
            "generated_hit_limit": int(sum(n >= args.max_new_tokens for n in generated)),
            "corpus_mean": round(float(count([ex.response for ex in chosen]).mean()), 1),
        }
        print(json.dumps({source: report[source]}), flush=True)
    return 0


def held_out_main(argv: list[str]) -> int:
    """Write the held-out prompts as Request JSON lines (for ``binbaton predict``)."""
    parser = argparse.ArgumentParser(prog="binbaton train-predictor held-out")
    parser.add_argument("--data", type=Path, default=INSTRUCTIONS)
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args(argv)
    _, held_out = split_examples(load_examples(args.data))
    for index, example in enumerate(held_out):
        request = {"id": f"held-{index}", "prompt": example.prompt, "max_tokens": args.max_tokens}
        sys.stdout.write(json.dumps(request) + "\n")
    return 0


def score_main(argv: list[str]) -> int:
    """Metrics of ``binbaton predict`` output on the held-out requests (joined by id)."""
    parser = argparse.ArgumentParser(prog="binbaton train-predictor score")
    parser.add_argument("predictions", type=Path, help="binbaton predict output (JSON lines)")
    parser.add_argument("--data", type=Path, default=INSTRUCTIONS)
    parser.add_argument("--model", type=Path, default=DEMO_MODEL_DIR, help="its tokenizer")
    parser.add_argument("--bins", type=int, default=4)
    args = parser.parse_args(argv)
    train, held_out = split_examples(load_examples(args.data))
    count = length_counter(args.model)
    boundaries = BinBoundaries.equal_mass(count([ex.response for ex in train]).tolist(), args.bins)
    actual = count([ex.response for ex in held_out])
    rows = [json.loads(line) for line in args.predictions.read_text().splitlines() if line]
    predicted = {row["id"]: row for row in rows if "predicted_tokens" in row}
    missing = [i for i in range(len(held_out)) if f"held-{i}" not in predicted]
    if missing:
        raise SystemExit(f"{len(missing)} held-out requests have no prediction (e.g. {missing[0]})")
    tokens = np.array([predicted[f"held-{i}"]["predicted_tokens"] for i in range(len(held_out))])
    bins = np.array([predicted[f"held-{i}"]["bin"] for i in range(len(held_out))])
    actual_bins = np.array([boundaries.bin_of(int(a)) for a in actual])
    report = {
        "held_out_examples": len(held_out),
        "bin_edges": list(boundaries.edges),
        **evaluate(tokens, actual, boundaries),
        "bin_accuracy_of_predict_bins": round(float((bins == actual_bins).mean()), 4),
    }
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo-model":
        return demo_model_main(argv[1:])
    if argv and argv[0] == "held-out":
        return held_out_main(argv[1:])
    if argv and argv[0] == "score":
        return score_main(argv[1:])
    if argv and argv[0] == "demo-eval":
        return demo_eval_main(argv[1:])
    if argv and argv[0] == "bench-predict":
        return bench_main(argv[1:])
    return train_main(argv)
