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


# --- interval over the images (delete-one jackknife) --------------------------------------------------


def _batch_grams(x: torch.Tensor, batch: int = 8) -> list[torch.Tensor]:
    return [xb @ xb.T for xb in x.split(batch)]


def _jackknife(x, y, batch=8):
    from medtransfer.analysis.cka import jackknife_minibatch_cka

    return jackknife_minibatch_cka(_batch_grams(x, batch), _batch_grams(y, batch))


def _interval(x, y, batch=8):
    from medtransfer.analysis.cka import jackknife_interval

    return jackknife_interval(_minibatch_cka(x, y, batch), _jackknife(x, y, batch))


def test_jackknife_replicates_leave_out_one_image_each():
    x, y = _correlated(24, 30, 20, seed=3, noise=2.0)
    replicates = _jackknife(x, y)
    assert replicates.shape == (24,)
    # replicate 9 = the minibatch estimator with image 9 (the 2nd of minibatch 2) removed
    keep = [i for i in range(24) if i != 9]
    cka = MinibatchCKA(1, 1)
    for rows in (keep[:8], keep[8:15], keep[15:]):
        cka.update([x[rows]], [y[rows]])
    assert float(replicates[9]) == pytest.approx(float(cka.compute()[0, 0]), abs=1e-12)


def test_interval_contains_the_point_estimate():
    x, y = _correlated(64, 200, 150, seed=3, noise=3.0)
    point = _minibatch_cka(x, y, 8)
    low, high = _interval(x, y)
    assert 0.2 < point < 0.9  # a layer pair that is neither identical nor unrelated
    assert low < point < high and high - low > 0.02


def test_interval_shrinks_with_more_images():
    widths = []
    for n in (16, 256):
        x, y = _correlated(n, 120, 100, seed=5, noise=3.0)
        low, high = _interval(x, y)
        widths.append(high - low)
    assert widths[1] < 0.5 * widths[0]  # ~ 1/sqrt(n): 16× the images, about a quarter of the width


def test_jackknife_standard_error_matches_the_spread_over_independent_image_samples():
    """What the interval claims: its se is the sd of the estimate over new samples of images (200 samples)."""
    estimates, ses = [], []
    mixing = _correlated(8, 40, 30, seed=11)  # fixed population: shared latent -> features
    for sample in range(200):
        g = _generator(1000 + sample)
        z = torch.randn(32, 8, generator=g, dtype=torch.float64)
        x = z @ mixing[0] + 2.0 * torch.randn(32, 40, generator=g, dtype=torch.float64)
        y = z @ mixing[1] + 2.0 * torch.randn(32, 30, generator=g, dtype=torch.float64)
        estimates.append(_minibatch_cka(x, y, 8))
        low, high = _interval(x, y)
        ses.append((high - low) / (2 * 1.959964))
    ratio = float(np.median(ses)) / float(np.std(estimates))
    assert 0.7 < ratio < 1.5, ratio


def test_jackknife_is_deterministic():
    x, y = _correlated(32, 60, 40, seed=1, noise=2.0)
    assert torch.equal(_jackknife(x, y), _jackknife(x, y))


def test_identical_representations_have_cka_one_and_a_zero_width_interval():
    x, _ = _correlated(32, 50, 10, seed=2)
    replicates = _jackknife(x, x.clone())
    assert torch.allclose(replicates, torch.ones_like(replicates), atol=1e-12)
    low, high = _interval(x, x.clone())
    assert abs(low - 1) < 1e-9 and abs(high - 1) < 1e-9


def test_jackknife_skips_images_of_a_minimal_minibatch_and_rejects_bad_input():
    from medtransfer.analysis.cka import jackknife_interval, jackknife_minibatch_cka

    x, y = _correlated(12, 20, 20, seed=4)
    assert _jackknife(x, y).shape == (8,)  # minibatches of 8 and 4: the 4 cannot lose an image
    k = torch.eye(6, dtype=torch.float64)
    with pytest.raises(ValueError, match="same non-zero number"):
        jackknife_minibatch_cka([k], [k, k])
    with pytest.raises(ValueError, match="n >= 4"):
        jackknife_minibatch_cka([k[:3, :3]], [k[:3, :3]])
    with pytest.raises(ValueError, match="level"):
        jackknife_interval(0.5, torch.ones(3), level=1.5)
    assert all(np.isnan(v) for v in jackknife_interval(0.5, torch.ones(1)))


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


def test_layer_cka_rows_carry_the_bootstrap_interval_and_rsa_of_the_flattened_maps():
    import copy

    from medtransfer.analysis.compare import layer_cka
    from medtransfer.networks import build_dynunet

    images = torch.rand(16, 1, 16, 16, generator=_generator(0))
    batches = [images[:8], images[8:]]
    net = build_dynunet(2, filters=[4, 8, 16], init_seed=0).eval()
    same = layer_cka(net, copy.deepcopy(net), batches, "encoder")
    assert all(row["cka_ci_low"] == pytest.approx(1.0, abs=1e-9) and row["cka_ci_high"] == pytest.approx(1.0, abs=1e-9)
               and row["rsa"] == pytest.approx(1.0, abs=1e-9) and len(row["cka_jackknife"]) == 16 for row in same)
    other = layer_cka(net, build_dynunet(2, filters=[4, 8, 16], init_seed=5), batches, "encoder")
    assert all(row["cka_ci_low"] < row["cka"] < row["cka_ci_high"] < 1.0 for row in other)
    none = layer_cka(net, copy.deepcopy(net), batches, "encoder", uncertainty=False)
    assert none[0]["cka_ci_low"] is None and none[0]["cka_jackknife"] == []
