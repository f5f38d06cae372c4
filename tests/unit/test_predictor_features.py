"""Hashed prompt features: stable, per-text, batch-independent."""

import numpy as np
from binbaton.service.predictor.features import NUM_DENSE, FeatureConfig, Featurizer


def sparse_of(batch, row: int) -> list[tuple[int, float]]:
    mask = batch.rows == row
    return sorted(zip(batch.cols[mask].tolist(), batch.values[mask].tolist(), strict=True))


def test_features_of_a_text_do_not_depend_on_its_batch():
    featurize = Featurizer()
    texts = ["Solve: 3 + 4 * 2 = ?", "Pretend you are a pirate captain.", "Hi"]
    together = featurize(texts)
    for row, text in enumerate(texts):
        alone = featurize([text])
        assert sparse_of(together, row) == sparse_of(alone, 0)
        np.testing.assert_array_equal(together.dense[row], alone.dense[0])


def test_hashes_are_stable_across_processes():
    # pinned: a trained model file is only meaningful if these never change
    batch = Featurizer(FeatureConfig())(["Hello world"])
    assert sorted(batch.cols.tolist())[:4] == [973, 7443, 11976, 17835]
    assert batch.num_rows == 1 and batch.dense.shape == (1, NUM_DENSE)


def test_case_is_folded_and_punctuation_splits_words():
    featurize = Featurizer(FeatureConfig(char_ngrams=(), word_ngrams=(1, 2)))
    a, b = featurize(["Hello, World"]), featurize(["hello world"])
    assert sparse_of(a, 0) == sparse_of(b, 0)
    assert len(sparse_of(a, 0)) == 3  # two words and one bigram


def test_sparse_part_has_unit_norm_and_dense_part_encodes_length():
    batch = Featurizer()(["a short prompt", "a much longer prompt " * 20])
    norms = np.bincount(batch.rows, weights=batch.values.astype(np.float64) ** 2)
    np.testing.assert_allclose(norms, [1.0, 1.0], rtol=1e-5)
    assert batch.dense[1, 1] > batch.dense[0, 1] and batch.dense[1, 2] > batch.dense[0, 2]
    assert np.all(batch.dense[:, 0] == 1.0)


def test_unusual_texts_do_not_break_it():
    featurize = Featurizer()
    batch = featurize(["", "\0\0", "naïve café ☕ 日本語", "x"])
    assert batch.num_rows == 4
    assert batch.cols.min() >= 0 and batch.cols.max() < FeatureConfig().num_buckets
    assert set(batch.rows.tolist()) <= {0, 1, 2, 3}
    assert 2 in batch.rows and 3 in batch.rows


def test_long_batches_grow_the_power_tables():
    featurize = Featurizer()
    text = "word " * 20_000  # 100k bytes, beyond the initial 64k power table
    batch = featurize([text])
    assert sparse_of(batch, 0) == sparse_of(featurize([text]), 0)


def test_config_is_validated():
    for bad in (dict(num_buckets=1000), dict(char_ngrams=(0,)), dict(word_ngrams=(3,))):
        try:
            FeatureConfig(**bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")
