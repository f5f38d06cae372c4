"""train-predictor: metrics, the training command on a toy corpus, scoring predict output,
and the demo-model trainer on a toy budget."""

import json

import numpy as np
import pytest
from binbaton.service.app.commands.train_predictor import evaluate, main
from binbaton.service.classifier.bins import BinBoundaries
from binbaton.service.predictor.corpus import Example, is_held_out, load_examples, split_examples
from binbaton.service.predictor.demo_model import (
    DemoModelConfig,
    build_tokenizer,
    train_demo_model,
)
from binbaton.service.predictor.learned import LengthModel
from binbaton.service.predictor.training import average_ranks, spearman

KINDS = (
    ("Compute {a} plus {b} and explain each step.", "Step: {a} + {b}. " * 6),
    ("Pretend you are a pirate named {a}; describe island {b}.", "Arr, the island is grand. " * 20),
    ("Call the weather API for city {a}.", "[Weather({a})]"),
)


def toy_examples(count: int) -> list[Example]:
    rng = np.random.default_rng(0)
    examples = []
    for i in range(count):
        prompt, response = KINDS[i % len(KINDS)]
        a, b = rng.integers(10_000), rng.integers(10_000)
        examples.append(Example(prompt.format(a=a, b=b), response.format(a=a, b=b), str(i % 3)))
    return examples


@pytest.fixture(scope="module")
def toy_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    examples = toy_examples(400)
    data = root / "toy.jsonl"
    data.write_text("".join(json.dumps(vars(ex)) + "\n" for ex in examples))
    tokenizer = build_tokenizer([ex.prompt + ex.response for ex in examples], vocab_size=300)
    tokenizer.save_pretrained(root / "tokenizer")
    return data, root / "tokenizer"


def test_spearman_with_ties_and_constants():
    assert average_ranks(np.array([10, 20, 20, 5])).tolist() == [1.0, 2.5, 2.5, 0.0]
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 30, 40, 90])) == pytest.approx(1.0)
    assert spearman(np.array([4, 3, 2, 1]), np.array([10, 30, 40, 90])) == pytest.approx(-1.0)
    assert spearman(np.array([7, 7, 7]), np.array([1, 2, 3])) is None


def test_evaluate_counts_bins_and_errors():
    boundaries = BinBoundaries((10, 100))
    metrics = evaluate(np.array([5, 50, 500, 50]), np.array([6, 60, 600, 5]), boundaries)
    assert metrics["mae"] == pytest.approx((1 + 10 + 100 + 45) / 4, abs=0.01)
    assert metrics["bin_accuracy"] == 0.75


def test_held_out_split_is_fixed_and_about_ten_percent():
    examples = toy_examples(3000)
    _, held_out = split_examples(examples)
    assert 0.07 < len(held_out) / len(examples) < 0.13
    assert all(is_held_out(ex.prompt) for ex in held_out)
    assert split_examples(list(reversed(examples)))[1] == list(reversed(held_out))


def test_bad_corpus_lines_are_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": 3}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        load_examples(path)


def test_train_predictor_reports_held_out_metrics(toy_corpus, tmp_path, capsys):
    data, tokenizer = toy_corpus
    out, report = tmp_path / "model.npz", tmp_path / "report.json"
    argv = ["--data", str(data), "--tokenizer", str(tokenizer), "--out", str(out)]
    assert main([*argv, "--report", str(report), "--iterations", "60"]) == 0
    metrics = json.loads(report.read_text())
    assert metrics["learned"]["spearman"] > 0.8
    assert metrics["learned"]["bin_accuracy"] > metrics["max_tokens"]["bin_accuracy"]
    assert metrics["max_tokens"]["spearman"] is None
    assert LengthModel.load(out).info["held_out"] == metrics["learned"]
    capsys.readouterr()
    # the held-out requests, and scoring predictions of them joined by id
    assert main(["held-out", "--data", str(data), "--max-tokens", "64"]) == 0
    requests = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert requests and all(r["max_tokens"] == 64 for r in requests)
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(
        "".join(
            json.dumps({"id": r["id"], "predicted_tokens": 3, "bin": 0}) + "\n" for r in requests
        )
    )
    assert main(["score", str(predictions), "--data", str(data), "--model", str(tokenizer)]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["spearman"] is None and scored["held_out_examples"] == len(requests)
    predictions.write_text("")
    with pytest.raises(SystemExit, match="no prediction"):
        main(["score", str(predictions), "--data", str(data), "--model", str(tokenizer)])


def test_demo_model_trainer_writes_a_loadable_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = DemoModelConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        max_seq_len=64,
        batch_size=8,
        train_seconds=1.0,
        threads=1,
    )
    summary = train_demo_model(toy_examples(60), tmp_path / "m", config, log=lambda *_: None)
    assert summary["steps"] >= 1
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert model.config.model_type == "llama"
    assert tokenizer("hi").input_ids[0] == tokenizer.bos_token_id == 1
    assert tokenizer.eos_token_id == 2
    assert (tmp_path / "m" / "generation_config.json").exists()
    resumed = train_demo_model(
        toy_examples(60), tmp_path / "m2", config, init_dir=tmp_path / "m", log=lambda *_: None
    )
    record = json.loads((tmp_path / "m2" / "training.json").read_text())
    assert resumed["steps"] >= 1 and record["continued_from"]["steps"] == summary["steps"]
