"""The learned length predictor: ridge training, clipping, save/load, online learning."""

import json

import numpy as np
import pytest
from binbaton.service.predictor.baselines import MaxTokensPredictor, OraclePredictor
from binbaton.service.predictor.features import FeatureConfig, Featurizer
from binbaton.service.predictor.interface import PredictionInput
from binbaton.service.predictor.learned import LearnedPredictor, LengthModel, fit_ridge
from binbaton.service.predictor.registry import (
    DEFAULT_ARTIFACT,
    load_default_predictor,
    make_predictor,
)

SMALL = FeatureConfig(num_buckets=1 << 12)
KINDS = {  # a toy corpus: the kind of prompt decides the answer length
    "math": ("Compute {a} plus {b} and explain each step.", 40),
    "story": ("Pretend you are a pirate named {a}; tell me about sailing to {b} island.", 160),
    "tool": ("Call the weather API for city number {a} on day {b}.", 8),
}


def toy_stream(count: int, seed: int) -> list[tuple[PredictionInput, int]]:
    rng = np.random.default_rng(seed)
    names = list(KINDS)
    pairs = []
    for _ in range(count):
        template, mean = KINDS[names[rng.integers(len(names))]]
        prompt = template.format(a=rng.integers(1000), b=rng.integers(1000))
        actual = max(1, int(rng.normal(mean, mean * 0.1)))
        pairs.append((PredictionInput(prompt, (), 4096), actual))
    return pairs


def mae(predictor, pairs) -> float:
    predicted = predictor.predict([item for item, _ in pairs])
    return float(np.mean([abs(p - a) for p, (_, a) in zip(predicted, pairs, strict=True)]))


def trained_model(count: int = 600) -> LengthModel:
    pairs = toy_stream(count, seed=0)
    features = Featurizer(SMALL)([item.prompt for item, _ in pairs])
    targets = np.log1p([actual for _, actual in pairs])
    return fit_ridge(features, targets, SMALL, l2=0.1, iterations=100)


def test_ridge_learns_lengths_by_kind_of_prompt():
    predictor = LearnedPredictor(trained_model())
    probe = toy_stream(300, seed=1)
    assert mae(predictor, probe) < 10
    assert mae(MaxTokensPredictor(), probe) > 1000


def test_predictions_are_clipped_to_one_and_max_tokens():
    model = LengthModel(SMALL)
    model.dense_weights[0] = np.log1p(500.0)  # bias: predicts 500 for everything
    predictor = LearnedPredictor(model)
    batch = [PredictionInput("x", (), 7), PredictionInput("y", (), 10_000)]
    assert predictor.predict(batch) == [7, 500]
    model.dense_weights[0] = -5.0
    assert predictor.predict(batch) == [1, 1]
    assert predictor.predict([]) == []


def test_online_learning_from_scratch_drives_the_error_down():
    predictor = LearnedPredictor(LengthModel(SMALL))  # untrained: predicts 1 for everything
    probe = toy_stream(200, seed=2)
    before = mae(predictor, probe)
    stream = toy_stream(2000, seed=3)
    errors = []
    for start in range(0, len(stream), 100):
        predictor.observe(stream[start : start + 100])
        errors.append(mae(predictor, probe))
    assert before > 50
    assert errors[-1] < 0.25 * before
    assert errors[-1] < errors[0]
    assert predictor.observed == 2000


def test_online_learning_follows_a_drift():
    predictor = LearnedPredictor(trained_model())
    drifted = [(item, actual * 3) for item, actual in toy_stream(1500, seed=4)]
    probe = [(item, actual * 3) for item, actual in toy_stream(200, seed=5)]
    before = mae(predictor, probe)
    predictor.observe(drifted)
    assert mae(predictor, probe) < 0.5 * before


def test_token_id_only_requests_use_the_decoder():
    seen = []

    def decode(ids):
        seen.append(tuple(ids))
        return "Compute 1 plus 2 and explain each step."

    predictor = LearnedPredictor(trained_model(), decode=decode)
    [predicted] = predictor.predict([PredictionInput(None, (5, 6, 7), 4096)])
    assert seen == [(5, 6, 7)]
    assert 20 < predicted < 80
    plain = LearnedPredictor(trained_model())
    assert 1 <= plain.predict([PredictionInput(None, (5, 6, 7), 4096)])[0] <= 4096


def test_save_and_load_round_trip(tmp_path):
    model = trained_model()
    model.info = {"tokenizer": "toy"}
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = LengthModel.load(path)
    probe = [item for item, _ in toy_stream(50, seed=6)]
    assert LearnedPredictor(loaded).predict(probe) == LearnedPredictor(model).predict(probe)
    assert loaded.info == {"tokenizer": "toy"} and loaded.feature_config == SMALL
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temporary file left behind


def test_loading_a_bad_file_fails_clearly(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a length-model file"):
        LengthModel.load(path)
    with pytest.raises(ValueError, match="expected"):
        LengthModel(SMALL, sparse_weights=np.zeros(3, np.float32))


def test_snapshots_survive_a_restart(tmp_path):
    artifact, snapshot = tmp_path / "trained.npz", tmp_path / "state" / "online.npz"
    trained_model().save(artifact)
    first = make_predictor("learned", artifact=artifact, snapshot_path=snapshot)
    first.snapshot_every = 500
    first.observe([(item, actual * 3) for item, actual in toy_stream(400, seed=7)])
    assert not snapshot.exists()  # not due yet
    first.observe([(item, actual * 3) for item, actual in toy_stream(400, seed=8)])
    assert snapshot.exists()
    first.save_snapshot()
    restarted = make_predictor("learned", artifact=artifact, snapshot_path=snapshot)
    fresh = make_predictor("learned", artifact=artifact)
    probe = [item for item, _ in toy_stream(50, seed=9)]
    assert restarted.predict(probe) == first.predict(probe)
    assert restarted.predict(probe) != fresh.predict(probe)
    assert restarted.observed == 800


def test_registry_names():
    assert isinstance(make_predictor("max_tokens"), MaxTokensPredictor)
    assert isinstance(make_predictor("oracle"), OraclePredictor)
    with pytest.raises(ValueError, match="unknown predictor"):
        make_predictor("psychic")


def test_committed_model_loads_by_default_and_is_small():
    assert DEFAULT_ARTIFACT.stat().st_size < 2_000_000
    predictor = load_default_predictor()
    assert predictor.name == "learned"
    info = predictor.model.info
    assert info["held_out"]["spearman"] >= 0.85 and info["held_out"]["bin_accuracy"] >= 0.65
    json.dumps(info)
    tool = "Use the Calculator API to find 12 times 34. Input: 12 * 34"
    story = "Imagine you are Sherlock Holmes. Describe to Watson how you solved your latest case."
    short, long = predictor.predict(
        [PredictionInput(tool, (), 1024), PredictionInput(story, (), 1024)]
    )
    assert short < long
