"""Tests for representational similarity analysis (RDMs and their Spearman comparison)."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from medtransfer.analysis.rsa import rdm, rsa


def _features(n: int = 40, p: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 5))
    return latent @ rng.standard_normal((5, p)) + 0.3 * rng.standard_normal((n, p))


def test_rdm_is_correlation_distance_symmetric_with_zero_diagonal():
    x = _features()
    d = rdm(x)
    assert d.shape == (40, 40)
    assert d.dtype == np.float64
    np.testing.assert_allclose(d, d.T, atol=0)
    np.testing.assert_array_equal(np.diag(d), 0.0)
    np.testing.assert_allclose(d, 1.0 - np.corrcoef(x), atol=1e-12)
    assert d.min() >= 0.0 and d.max() <= 2.0


def test_rdm_accepts_torch_tensors():
    x = _features()
    np.testing.assert_allclose(rdm(torch.from_numpy(x).float()), rdm(x), atol=1e-6)


def test_rsa_with_itself_is_one():
    x = _features()
    assert rsa(x, x) == pytest.approx(1.0, abs=1e-12)


def test_rsa_invariant_to_per_example_affine_maps():
    # Pearson correlation between examples ignores each example's offset and positive scale: identical RDMs.
    x = _features()
    rng = np.random.default_rng(1)
    y = x * rng.uniform(0.5, 3.0, size=(40, 1)) + rng.normal(size=(40, 1))
    assert rsa(x, y) == pytest.approx(1.0, abs=1e-12)


def test_rsa_near_one_for_monotone_feature_transform():
    x = _features()
    assert rsa(x, np.tanh(0.3 * x)) > 0.95
    assert rsa(x, x**3) > 0.8


def test_rsa_is_spearman_of_upper_triangles():
    x, y = _features(seed=2), _features(seed=3)
    upper = np.triu_indices(40, k=1)
    expected = spearmanr(rdm(x)[upper], rdm(y)[upper]).statistic
    assert rsa(x, y) == pytest.approx(expected, abs=1e-12)


def test_rsa_of_independent_features_near_zero():
    rng = np.random.default_rng(4)
    assert abs(rsa(rng.standard_normal((60, 50)), rng.standard_normal((60, 50)))) < 0.1


def test_rsa_deterministic_and_returns_float():
    x, y = _features(seed=5), _features(seed=6)
    first = rsa(x, y)
    assert isinstance(first, float)
    assert rsa(x, y) == first
    assert rsa(torch.from_numpy(x), torch.from_numpy(y)) == first


def test_rsa_compares_different_feature_dimensions():
    x = _features(p=30)
    assert rsa(x, x[:, :12]) > 0.5


def test_input_errors():
    with pytest.raises(ValueError, match="constant features"):
        rdm(np.vstack([_features(n=3), np.full((1, 30), 2.0)]))
    with pytest.raises(ValueError, match="flatten_features"):
        rdm(np.zeros((4, 3, 2)))
    with pytest.raises(ValueError, match="different numbers of examples"):
        rsa(_features(n=10), _features(n=11))
    with pytest.raises(ValueError, match="n >= 3"):
        rsa(_features(n=2), _features(n=2))
