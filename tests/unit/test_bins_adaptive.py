"""Adaptive equal-mass bins with hysteresis, and per-bin worker settings."""

import numpy as np
import pytest
from binbaton.service.classifier.bins import (
    AdaptiveBinner,
    AdaptiveBinnerConfig,
    BinBoundaries,
    BinSettings,
    FixedBinner,
    bin_settings,
    edges_shift,
)


def feed(binner, values) -> list[int]:
    return [binner.assign(int(v)) for v in values]


def test_edges_follow_a_shift_in_predictions():
    rng = np.random.default_rng(0)
    binner = AdaptiveBinner(BinBoundaries((10, 20, 30)), AdaptiveBinnerConfig(window=1000))
    feed(binner, rng.integers(100, 1001, size=3000))
    # equal-mass quartiles of U[100, 1000] are ~325, 550, 775
    np.testing.assert_allclose(binner.boundaries.edges, (325, 550, 775), rtol=0.1)
    assert binner.updates >= 1
    bins = feed(binner, rng.integers(100, 1001, size=4000))
    assert np.allclose(np.bincount(bins, minlength=4) / 4000, 0.25, atol=0.05)


def test_hysteresis_keeps_edges_still_on_a_stationary_stream():
    rng = np.random.default_rng(1)
    config = AdaptiveBinnerConfig(window=2000, min_new_observations=200, relative_threshold=0.2)
    binner = AdaptiveBinner(BinBoundaries((50, 100, 150)), config)
    feed(binner, rng.integers(1, 201, size=20_000))  # quartiles of U[1, 200]: 50, 100, 150
    assert binner.updates == 0
    jumpy = AdaptiveBinner(BinBoundaries((50, 100, 150)), AdaptiveBinnerConfig(2000, 200, 0.0))
    feed(jumpy, rng.integers(1, 201, size=20_000))
    assert jumpy.updates > 10  # without the threshold the same stream makes them flap


def test_no_move_before_enough_new_observations():
    config = AdaptiveBinnerConfig(window=100, min_new_observations=100, relative_threshold=0.0)
    binner = AdaptiveBinner(BinBoundaries((1, 2, 3)), config)
    feed(binner, [500] * 99)
    assert binner.boundaries.edges == (1, 2, 3)
    feed(binner, [500])
    assert binner.boundaries.edges != (1, 2, 3)


def test_batch_assignment_matches_one_by_one():
    values = list(range(1, 300, 7))
    one = AdaptiveBinner(BinBoundaries((20, 80, 150)), AdaptiveBinnerConfig(64, 16, 0.05))
    many = AdaptiveBinner(BinBoundaries((20, 80, 150)), AdaptiveBinnerConfig(64, 16, 0.05))
    fixed = FixedBinner(BinBoundaries((20, 80, 150)))
    assert fixed.assign_batch(values) == [fixed.assign(v) for v in values]
    assert many.assign_batch(values[:16]) == feed(one, values[:16])
    assert one.boundaries == many.boundaries
    assert one.num_bins == many.num_bins == 4


def test_single_bin_never_moves():
    binner = AdaptiveBinner(BinBoundaries(()), AdaptiveBinnerConfig(10, 1, 0.0))
    assert feed(binner, range(1, 50)) == [0] * 49


def test_edges_shift_is_relative():
    assert edges_shift(BinBoundaries((100, 200)), BinBoundaries((110, 200))) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        edges_shift(BinBoundaries((1,)), BinBoundaries((1, 2)))


def test_config_is_validated():
    with pytest.raises(ValueError):
        AdaptiveBinnerConfig(window=10, min_new_observations=20)
    with pytest.raises(ValueError):
        AdaptiveBinnerConfig(relative_threshold=-1)


def test_bin_settings_reserve_the_upper_edge_and_fill_the_kv_budget():
    settings = bin_settings(
        BinBoundaries((64, 128, 512)),
        max_model_len=2048,
        kv_budget_tokens=65_536,
        max_tokens_limit=1024,
        prompt_allowance=256,
        max_batch_cap=200,
    )
    assert settings == [
        BinSettings(64, 200),  # 65536 // 320 = 204, capped at 200
        BinSettings(128, 170),  # 65536 // 384
        BinSettings(512, 85),  # 65536 // 768
        BinSettings(1024, 51),  # last bin: the limit; 65536 // 1280
    ]


def test_bin_settings_respect_the_context_length():
    settings = bin_settings(BinBoundaries((100, 900)), 1024, 10_000, 4096, prompt_allowance=224)
    assert [s.reserved_len for s in settings] == [100, 800, 800]  # 1024 - 224
    assert [s.max_batch for s in settings] == [30, 9, 9]


def test_bin_settings_reject_a_budget_below_one_sequence():
    with pytest.raises(ValueError, match="cannot hold one sequence"):
        bin_settings(BinBoundaries((10,)), 512, 100, 256, prompt_allowance=64)
    with pytest.raises(ValueError):
        bin_settings(BinBoundaries((10,)), 512, 4096, 256, prompt_allowance=512)
