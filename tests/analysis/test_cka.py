"""Tests for the CKA estimators: reference formulas, invariances, bias, and the minibatch estimator."""

import gc
import weakref

import numpy as np
import pytest
import torch

from medtransfer.analysis.cka import MinibatchCKA, flatten_features, linear_cka, unbiased_cka, unbiased_hsic


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _correlated(n: int, p: int, q: int, seed: int, noise: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two representations of n examples sharing an 8-dimensional latent, plus independent noise."""
    g = _generator(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    z = randn(n, 8)
    return z @ randn(8, p) + noise * randn(n, p), z @ randn(8, q) + noise * randn(n, q)


def _orthogonal(p: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=_generator(seed), dtype=torch.float64))
    return q


def _kornblith_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019: HSIC = tr(K H L H) / (n − 1)², CKA = HSIC(K, L) / √(HSIC(K, K) · HSIC(L, L))."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic(k, m):
        return np.trace(k @ h @ m @ h) / (n - 1) ** 2

    k, m = x @ x.T, y @ y.T
    return hsic(k, m) / np.sqrt(hsic(k, k) * hsic(m, m))


def _minibatch_cka(x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    cka = MinibatchCKA(1, 1)
    for xb, yb in zip(x.split(batch), y.split(batch)):
        cka.update([xb], [yb])
    return float(cka.compute()[0, 0])


# --- CKA of a representation with itself ---------------------------------------------------------------


def test_self_similarity_is_one():
    x, _ = _correlated(64, 20, 5, seed=0)
    assert float(linear_cka(x, x)) == pytest.approx(1.0, abs=1e-12)
    assert float(unbiased_cka(x, x)) == pytest.approx(1.0, abs=1e-12)
    assert _minibatch_cka(x, x, batch=16) == pytest.approx(1.0, abs=1e-12)


def test_minibatch_self_similarity_diagonal_for_several_layers():
    x, y = _correlated(48, 30, 12, seed=1)
    cka = MinibatchCKA(2, 2)
    for xb, yb in zip(x.split(12), y.split(12)):
        cka.update([xb, yb], [xb, yb])
    result = cka.compute()
    assert result.shape == (2, 2)
    torch.testing.assert_close(result.diagonal(), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(result, result.T, rtol=0, atol=1e-12)


# --- Reference formula ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "p", "q"), [(40, 10, 7), (30, 100, 60)], ids=["n>p feature space", "p>n gram"])
def test_linear_cka_matches_kornblith_formula(n, p, q):
    x, y = _correlated(n, p, q, seed=2)
    x = x + 3.0  # the reference centres through H; linear_cka must centre too
    expected = _kornblith_numpy(x.numpy(), y.numpy())
    assert float(linear_cka(x, y)) == pytest.approx(expected, abs=1e-10)


def test_linear_cka_float32_input_is_accumulated_in_float64():
    x, y = _correlated(32, 50, 40, seed=3)
    result = linear_cka(x.float(), y.float())
    assert result.dtype == torch.float64
    assert float(result) == pytest.approx(_kornblith_numpy(x.numpy(), y.numpy()), abs=1e-6)


def test_unbiased_hsic_matches_song_formula_written_with_numpy():
    x, y = _correlated(20, 9, 6, seed=4)
    k, m = (x @ x.T).numpy(), (y @ y.T).numpy()
    n = k.shape[0]
    kt, mt = k - np.diag(np.diag(k)), m - np.diag(np.diag(m))
    one = np.ones(n)
    expected = (
        np.trace(kt @ mt)
        + (one @ kt @ one) * (one @ mt @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * one @ kt @ mt @ one
    ) / (n * (n - 3))
    assert float(unbiased_hsic(torch.from_numpy(k), torch.from_numpy(m))) == pytest.approx(expected, rel=1e-12)


# --- Invariances ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", [linear_cka, unbiased_cka], ids=["biased", "unbiased"])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(estimator):
    x, y = _correlated(80, 24, 16, seed=5)
    reference = float(estimator(x, y))
    assert 0.2 < reference < 0.99  # a non-trivial similarity, so invariance is not vacuous
    assert float(estimator(x @ _orthogonal(24, seed=6), y)) == pytest.approx(reference, abs=1e-10)
    assert float(estimator(x, y @ _orthogonal(16, seed=7))) == pytest.approx(reference, abs=1e-10)
    assert float(estimator(4.2 * x, 0.03 * y)) == pytest.approx(reference, abs=1e-10)


def test_unbiased_hsic_needs_no_centring():
    x, y = _correlated(50, 30, 20, seed=8)
    shift = 5.0 * torch.randn(30, generator=_generator(9), dtype=torch.float64)
    xs = x + shift
    expected = float(unbiased_hsic(x @ x.T, y @ y.T))
    assert float(unbiased_hsic(xs @ xs.T, y @ y.T)) == pytest.approx(expected, rel=1e-9)


# --- Bias of the biased estimator -------------------------------------------------------------------------


def test_independent_features_unbiased_near_zero_biased_is_not():
    g = _generator(10)
    n, p = 512, 2048
    x, y = torch.randn(n, p, generator=g), torch.randn(n, p, generator=g)
    assert abs(float(unbiased_cka(x, y))) < 0.05
    assert abs(_minibatch_cka(x, y, batch=128)) < 0.05
    assert float(linear_cka(x, y)) > 0.5  # p ≫ n: the biased estimator reports strong similarity of noise


# --- Minibatch estimator ----------------------------------------------------------------------------------


def test_single_minibatch_equals_unbiased_cka():
    x, y = _correlated(40, 25, 15, seed=11)
    assert _minibatch_cka(x, y, batch=40) == pytest.approx(float(unbiased_cka(x, y)), abs=1e-12)


def test_minibatches_equal_hand_accumulated_hsic():
    x, y = _correlated(60, 25, 15, seed=12)
    sums = {"xy": 0.0, "xx": 0.0, "yy": 0.0}
    for xb, yb in zip(x.split(20), y.split(20)):
        k, m = xb @ xb.T, yb @ yb.T
        sums["xy"] += float(unbiased_hsic(k, m))
        sums["xx"] += float(unbiased_hsic(k, k))
        sums["yy"] += float(unbiased_hsic(m, m))
    expected = sums["xy"] / np.sqrt(sums["xx"] * sums["yy"])
    assert _minibatch_cka(x, y, batch=20) == pytest.approx(expected, abs=1e-12)


def test_layer_grid_matches_pairwise_estimates():
    g = _generator(13)
    x, y = _correlated(64, 20, 10, seed=14)
    layers_a = [x, torch.randn(64, 3, 4, 4, generator=g, dtype=torch.float64)]
    layers_b = [y, x[:, :5], torch.randn(64, 6, generator=g, dtype=torch.float64)]
    grid = MinibatchCKA(2, 3)
    for start in range(0, 64, 16):
        grid.update([t[start : start + 16] for t in layers_a], [t[start : start + 16] for t in layers_b])
    result = grid.compute()
    assert result.shape == (2, 3)
    for i, a in enumerate(layers_a):
        for j, b in enumerate(layers_b):
            expected = _minibatch_cka(a.reshape(64, -1), b, batch=16)
            assert float(result[i, j]) == pytest.approx(expected, abs=1e-12)


def test_minibatch_estimate_close_to_full_data_unbiased_cka():
    x, y = _correlated(2048, 64, 48, seed=15, noise=2.0)
    full = float(unbiased_cka(x, y))
    assert 0.2 < full < 0.95
    assert _minibatch_cka(x, y, batch=128) == pytest.approx(full, abs=0.05)


def test_bare_tensors_accepted_for_a_single_pair():
    x, y = _correlated(32, 10, 10, seed=16)
    cka = MinibatchCKA(1, 1)
    cka.update(x, y)
    assert float(cka.compute()[0, 0]) == pytest.approx(float(unbiased_cka(x, y)), abs=1e-12)


def test_conv_feature_maps_flattened_per_example():
    g = _generator(17)
    maps_2d = torch.randn(16, 4, 6, 6, generator=g)
    maps_3d = torch.randn(16, 2, 3, 4, 5, generator=g)
    cka = MinibatchCKA(1, 1)
    cka.update([maps_2d], [maps_3d])
    expected = unbiased_cka(maps_2d.reshape(16, -1), maps_3d.reshape(16, -1))
    assert float(cka.compute()[0, 0]) == pytest.approx(float(expected), abs=1e-12)


def test_update_keeps_no_reference_to_features():
    x = torch.randn(16, 8, 5, 5, requires_grad=True)
    features_a, features_b = [x * 2.0, x.relu()], [x.mean(dim=1)]  # carry autograd graphs
    refs = [weakref.ref(t) for t in features_a + features_b]
    cka = MinibatchCKA(2, 1)
    cka.update(features_a, features_b)
    del features_a, features_b
    gc.collect()
    assert all(ref() is None for ref in refs)
    state = [v for v in vars(cka).values() if isinstance(v, torch.Tensor)]
    assert sorted(tuple(t.shape) for t in state) == [(1,), (2,), (2, 1)]
    assert not any(t.requires_grad for t in state)


def test_reset_forgets_minibatches():
    x, y = _correlated(32, 10, 10, seed=18)
    cka = MinibatchCKA(1, 1)
    cka.update([torch.randn(32, 10, generator=_generator(19), dtype=torch.float64)], [y])
    cka.reset()
    with pytest.raises(RuntimeError, match="before any update"):
        cka.compute()
    cka.update([x], [y])
    assert float(cka.compute()[0, 0]) == pytest.approx(float(unbiased_cka(x, y)), abs=1e-12)


# --- Feature-map handling ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "flat", "pooled"),
    [((4, 3, 5, 6), (4, 90), (4, 3)), ((2, 3, 4, 5, 6), (2, 360), (2, 3))],
    ids=["2d", "3d"],
)
def test_flatten_features_shapes(shape, flat, pooled):
    t = torch.randn(shape, generator=_generator(20))
    assert flatten_features(t).shape == flat
    assert flatten_features(t, "flatten").shape == flat
    pooled_t = flatten_features(t, "pool")
    assert pooled_t.shape == pooled
    torch.testing.assert_close(pooled_t[1, 2], t[1, 2].mean())
    torch.testing.assert_close(flatten_features(t, "flatten")[1], t[1].reshape(-1))


def test_flatten_features_rejects_bad_mode_and_pool_without_spatial_axes():
    with pytest.raises(ValueError, match="unknown feature mode"):
        flatten_features(torch.zeros(2, 3, 4), "pixels")
    with pytest.raises(ValueError, match="pool"):
        flatten_features(torch.zeros(2, 3), "pool")


# --- Input validation -------------------------------------------------------------------------------------


def test_unbiased_hsic_requires_four_examples():
    k = torch.eye(3)
    with pytest.raises(ValueError, match="n >= 4"):
        unbiased_hsic(k, k)
    with pytest.raises(ValueError, match="n >= 4"):
        MinibatchCKA(1, 1).update([torch.randn(3, 5)], [torch.randn(3, 5)])


def test_shape_errors():
    with pytest.raises(ValueError, match="different numbers of examples"):
        linear_cka(torch.randn(10, 3), torch.randn(11, 3))
    with pytest.raises(ValueError, match="flatten_features"):
        linear_cka(torch.randn(10, 3, 2), torch.randn(10, 3))
    with pytest.raises(ValueError, match="Gram"):
        unbiased_hsic(torch.randn(5, 5), torch.randn(6, 6))
    cka = MinibatchCKA(2, 1)
    with pytest.raises(ValueError, match="expected 2 feature tensors"):
        cka.update([torch.randn(8, 3)], [torch.randn(8, 3)])
    with pytest.raises(ValueError, match="batch sizes differ"):
        cka.update([torch.randn(8, 3), torch.randn(8, 3)], [torch.randn(9, 3)])
    with pytest.raises(ValueError, match="batch sizes differ"):
        cka.update([torch.randn(8, 3), torch.randn(7, 3)], [torch.randn(8, 3)])
    assert cka.num_batches == 0


# --- bootstrap interval over the images ----------------------------------------------------------------


def _batch_grams(x: torch.Tensor, batch: int = 8) -> list[torch.Tensor]:
    return [xb @ xb.T for xb in x.split(batch)]


def _bootstrap(x, y, n_resamples=400, seed=0, batch=8):
    from medtransfer.analysis.cka import bootstrap_minibatch_cka

    return bootstrap_minibatch_cka(_batch_grams(x, batch), _batch_grams(y, batch), n_resamples=n_resamples, seed=seed)


def test_bootstrap_interval_contains_the_point_estimate_and_centres_on_it():
    from medtransfer.analysis.cka import percentile_interval

    x, y = _correlated(64, 200, 150, seed=3, noise=3.0)
    point = _minibatch_cka(x, y, 8)
    draws = _bootstrap(x, y)
    low, high = percentile_interval(draws)
    assert 0.2 < point < 0.9  # a layer pair that is neither identical nor unrelated
    assert low < point < high and high - low > 0.02
    # copies of one image are kept off the diagonal; kept, they would pull every replicate towards 1
    assert abs(float(draws.mean()) - point) < 0.25 * (high - low)


def test_bootstrap_interval_shrinks_with_more_images():
    from medtransfer.analysis.cka import percentile_interval

    widths = []
    for n in (16, 256):
        x, y = _correlated(n, 120, 100, seed=5, noise=3.0)
        low, high = percentile_interval(_bootstrap(x, y))
        widths.append(high - low)
    assert widths[1] < 0.5 * widths[0]  # ~ 1/sqrt(n): 16× the images, a quarter of the width


def test_bootstrap_is_deterministic_given_the_seed():
    x, y = _correlated(32, 60, 40, seed=1, noise=2.0)
    assert torch.equal(_bootstrap(x, y, seed=7), _bootstrap(x, y, seed=7))
    assert not torch.equal(_bootstrap(x, y, seed=7), _bootstrap(x, y, seed=8))


def test_identical_representations_have_cka_one_and_a_zero_width_interval():
    from medtransfer.analysis.cka import percentile_interval

    x, _ = _correlated(32, 50, 10, seed=2)
    draws = _bootstrap(x, x.clone())
    assert torch.allclose(draws, torch.ones_like(draws), atol=1e-12)
    low, high = percentile_interval(draws)
    assert abs(low - 1) < 1e-12 and abs(high - 1) < 1e-12


def test_bootstrap_of_one_minibatch_resamples_the_unbiased_cka():
    """A single group of all n examples is the bootstrap of unbiased_cka; the draws don't depend on the layer."""
    from medtransfer.analysis.cka import bootstrap_minibatch_cka

    x, y = _correlated(40, 30, 20, seed=4, noise=2.0)
    one = bootstrap_minibatch_cka([x @ x.T], [y @ y.T], n_resamples=200, seed=0)
    assert abs(float(one.median()) - float(unbiased_cka(x, y))) < 0.1
    # same seed, same group sizes → the same images drawn, whatever the features: a replicate of the pair
    # (x, x) is 1 exactly, so the draws are the ones of the pair's own index sets
    generator = torch.Generator().manual_seed(0)
    idx = torch.randint(40, (200, 40), generator=generator)
    first = idx[0]
    keep = first[:, None] != first[None, :]
    kt = (x @ x.T)[first][:, first] * keep
    lt = (y @ y.T)[first][:, first] * keep
    expected = unbiased_hsic(kt, lt) / torch.sqrt(unbiased_hsic(kt, kt) * unbiased_hsic(lt, lt))
    assert torch.allclose(one[0], expected)


def test_bootstrap_rejects_bad_input():
    from medtransfer.analysis.cka import bootstrap_minibatch_cka, percentile_interval

    k = torch.eye(6, dtype=torch.float64)
    with pytest.raises(ValueError, match="same non-zero number"):
        bootstrap_minibatch_cka([k], [k, k])
    with pytest.raises(ValueError, match="n >= 4"):
        bootstrap_minibatch_cka([k[:3, :3]], [k[:3, :3]])
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_minibatch_cka([k], [k], n_resamples=0)
    with pytest.raises(ValueError, match="level"):
        percentile_interval(torch.ones(3), level=1.5)


def test_rsa_from_the_gram_matrices_equals_rsa_on_the_features():
    """RSA on the representation the CKA uses: the RDM from Gram matrix + row sums is the features' RDM."""
    from medtransfer.analysis.rsa import rdm, rdm_from_gram, rsa, rsa_within_groups

    x, y = _correlated(24, 40, 30, seed=6, noise=2.0)
    assert np.allclose(rdm_from_gram(x @ x.T, x.sum(dim=1), x.shape[1]), rdm(x), atol=1e-10)
    whole = rsa_within_groups([rdm(x)], [rdm(y)])
    assert abs(whole - rsa(x, y)) < 1e-12
    groups = rsa_within_groups([rdm(xb) for xb in x.split(8)], [rdm(yb) for yb in y.split(8)])
    assert -1.0 <= groups <= 1.0 and groups != whole  # 3 × 28 within-group pairs, not all 276
    with pytest.raises(ValueError, match="constant features"):
        rdm_from_gram(torch.ones(3, 3) * 4, torch.full((3,), 4.0), 4)
