"""Tests for the transferability scores: derangements, Hidy et al.'s robustness score and LogME."""

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import multivariate_normal
from torch import nn

from medtransfer.analysis.transferability import (
    _feature_map,
    derangement,
    logme,
    logme_evidence,
    logme_score,
    mild_intensity_augmentation,
    robustness_score,
)
from medtransfer.networks.unets import build_dynunet

PART_TABLE = {"input_block": "encoder", "bottleneck": "encoder", "output_block": "head"}


class Thumbnail(nn.Module):
    """Identity-preserving features: a 4×4 thumbnail of the image, one channel per cell, ``(B, 16, 1, 1)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 4).flatten(1)[:, :, None, None]


class Constant(nn.Module):
    """A collapsed encoder: the same feature map whatever the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], 8, *x.shape[2:], dtype=x.dtype)


class TinyNet(nn.Module):
    """Encoder (input_block → bottleneck) and head, declared through a `part_table`; level = input_block."""

    part_table = PART_TABLE

    def __init__(self, input_block: nn.Module) -> None:
        super().__init__()
        self.input_block = input_block
        self.bottleneck = nn.Identity()
        self.output_block = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_block(self.bottleneck(self.input_block(x)))


def _squares(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """n images in [0, 1]: a bright square at a random place on a dark background, (n, 1, size, size)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, size, size)
    for image, (row, col) in zip(images, torch.randint(0, size - 10, (n, 2), generator=g).tolist()):
        image[0, row : row + 10, col : col + 10] = 1.0
    return images


# --- derangement ---------------------------------------------------------------------------------------------


def test_derangement_is_a_permutation_without_fixed_points():
    for n in range(2, 52):
        for seed in range(20):
            perm = derangement(n, torch.Generator().manual_seed(seed))
            assert perm.dtype == torch.int64
            assert sorted(perm.tolist()) == list(range(n))
            assert not (perm == torch.arange(n)).any(), (n, seed)


def test_derangement_is_deterministic_given_the_seed():
    for n in (2, 7, 30):
        first = derangement(n, torch.Generator().manual_seed(3))
        assert torch.equal(first, derangement(n, torch.Generator().manual_seed(3)))
    draws = {tuple(derangement(30, torch.Generator().manual_seed(s)).tolist()) for s in range(5)}
    assert len(draws) == 5


def test_derangement_is_uniform_over_all_derangements():
    g = torch.Generator().manual_seed(0)
    counts = Counter(tuple(derangement(4, g).tolist()) for _ in range(2700))
    assert len(counts) == 9  # D(4) = 9; a random cyclic permutation (Sattolo) would give only 6
    assert all(200 <= c <= 400 for c in counts.values()), counts  # 300 expected each


def test_derangement_needs_two_elements():
    for n in (0, 1):
        with pytest.raises(ValueError, match="n >= 2"):
            derangement(n, torch.Generator())


# --- mild intensity augmentation -------------------------------------------------------------------------------


def test_mild_intensity_augmentation_is_mild_random_and_seeded():
    images = torch.rand(4, 1, 16, 16)
    a = mild_intensity_augmentation(images, torch.Generator().manual_seed(0))
    b = mild_intensity_augmentation(images, torch.Generator().manual_seed(0))
    c = mild_intensity_augmentation(images, torch.Generator().manual_seed(1))
    assert a.shape == images.shape and a.dtype == images.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a - images).abs().mean() < 0.2
    assert torch.corrcoef(torch.stack([a.flatten(), images.flatten()]))[0, 1] > 0.9


def test_mild_intensity_augmentation_works_in_the_images_own_range():
    images = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    g0, g1 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    scaled = mild_intensity_augmentation(100 * images - 40, g0)
    torch.testing.assert_close(scaled, 100 * mild_intensity_augmentation(images, g1) - 40)


# --- robustness score ------------------------------------------------------------------------------------------


def test_identity_preserving_encoder_scores_lower_than_a_collapsed_one():
    batches = list(_squares(11).split(4))  # odd N, uneven batches
    identity = robustness_score(TinyNet(Thumbnail()), batches)
    collapsed = robustness_score(TinyNet(Constant()), batches)
    assert identity["level"] == collapsed["level"] == "input_block"
    assert identity["n_images"] == collapsed["n_images"] == 11
    assert collapsed["per_image"] == [0.5] * 11
    assert collapsed["score"] == 0.5
    assert identity["score"] < 0.25


def test_robustness_score_matches_the_formula():
    """Recompute R = mean_i max(0, d(q_i, k_i) − d(q_i, k_π(i)) + m) from the documented draw order."""
    images, margin, seed = _squares(7), 0.3, 4
    result = robustness_score(TinyNet(Thumbnail()), [images[:3], images[3:]], margin=margin, seed=seed)

    g = torch.Generator().manual_seed(seed)
    embed = Thumbnail()
    q, k = [], []
    for batch in (images[:3], images[3:]):
        q.append(embed(mild_intensity_augmentation(batch, g)).flatten(1).double())
        k.append(embed(mild_intensity_augmentation(batch, g)).flatten(1).double())
    q, k = torch.cat(q), torch.cat(k)
    perm = derangement(7, g)

    def cosine_distance(a, b):
        return 1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))

    expected = (cosine_distance(q, k) - cosine_distance(q, k[perm]) + margin).clamp_min(0)
    np.testing.assert_allclose(result["per_image"], expected.numpy(), atol=1e-12)
    assert result["score"] == pytest.approx(float(expected.mean()), abs=1e-12)
    assert result["margin"] == margin


def test_robustness_score_is_deterministic_given_the_seed():
    model, batches = TinyNet(Thumbnail()), [_squares(8)]
    first = robustness_score(model, batches, seed=1)
    assert robustness_score(model, batches, seed=1) == first
    assert robustness_score(model, batches, seed=2)["per_image"] != first["per_image"]


def test_robustness_score_needs_two_images():
    with pytest.raises(ValueError, match="at least 2 images"):
        robustness_score(TinyNet(Thumbnail()), [_squares(1)])


@pytest.mark.parametrize("spatial_dims, size", [(2, 32), (3, 16)])
def test_robustness_score_on_dynunet(spatial_dims, size):
    model = build_dynunet(spatial_dims)
    model.train()
    model.input_block.eval()
    images = torch.rand(4, 1, *([size] * spatial_dims))
    batches = [{"image": images[:2]}, {"image": images[2:]}]
    result = robustness_score(model, batches)
    assert result["level"] == "downsamples.1"
    assert result["n_images"] == 4 and len(result["per_image"]) == 4
    assert all(0.0 <= r <= 2.5 for r in result["per_image"])
    assert model.training and not model.input_block.training  # flags restored
    unpooled = robustness_score(model, batches, level="bottleneck", pool=False)
    assert unpooled["level"] == "bottleneck" and math.isfinite(unpooled["score"])


# --- LogME -----------------------------------------------------------------------------------------------------


def _logme_algorithm1(f: np.ndarray, y: np.ndarray, iterations: int = 3000) -> float:
    """Algorithm 1 of You et al. (ICML 2021), literally: SVD of FᵀF, iterate (γ, m, α, β), evidence / n."""
    n, d = f.shape
    v, sigma, _ = np.linalg.svd(f.T @ f)
    alpha, beta = 1.0, 1.0
    for _ in range(iterations):
        gamma = np.sum(beta * sigma / (alpha + beta * sigma))
        m = beta * (v @ np.diag(1 / (alpha + beta * sigma)) @ v.T) @ f.T @ y
        alpha, beta = gamma / (m @ m), (n - gamma) / np.sum((f @ m - y) ** 2)
    m = beta * (v @ np.diag(1 / (alpha + beta * sigma)) @ v.T) @ f.T @ y
    evidence = (
        n / 2 * np.log(beta)
        + d / 2 * np.log(alpha)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * np.sum((f @ m - y) ** 2)
        - alpha / 2 * m @ m
        - 0.5 * np.sum(np.log(alpha + beta * sigma))
    )
    return evidence / n


def _marginal_log_likelihood(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, FFᵀ/α + I/β) / n, the evidence of the Bayesian linear model computed directly."""
    n = len(y)
    return multivariate_normal(np.zeros(n), f @ f.T / alpha + np.eye(n) / beta).logpdf(y) / n


def _classification_data(n: int = 300, d: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((n, d))
    labels = (f @ rng.standard_normal(d) + 0.3 * rng.standard_normal(n) > 0).astype(float)
    return f, np.stack([1 - labels, labels], axis=1)


def test_logme_prefers_features_that_predict_the_labels():
    f, y = _classification_data()
    random_features = np.random.default_rng(1).standard_normal(f.shape)
    assert logme(f, y) > logme(random_features, y) + 0.05


@pytest.mark.parametrize("n, d", [(60, 5), (25, 40)], ids=["n>d", "n<d"])
def test_logme_agrees_with_algorithm_1(n, d):
    f, y = _classification_data(n, d, seed=2)
    expected = np.mean([_logme_algorithm1(f, y[:, j]) for j in range(2)])
    assert logme(f, y) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("n, d", [(60, 5), (25, 40)], ids=["n>d", "n<d"])
def test_logme_evidence_is_the_maximum_marginal_likelihood(n, d):
    f, y = _classification_data(n, d, seed=2)
    fit = logme_evidence(f, y[:, 1])
    best = _marginal_log_likelihood(f, y[:, 1], fit.alpha, fit.beta)
    assert fit.log_evidence == pytest.approx(best, rel=1e-9)
    for da, db in [(1.1, 1), (0.9, 1), (1, 1.1), (1, 0.9)]:
        assert _marginal_log_likelihood(f, y[:, 1], fit.alpha * da, fit.beta * db) < best


def test_logme_is_invariant_to_feature_scale_and_rotation():
    f, y = _classification_data(seed=4)
    rotation, _ = np.linalg.qr(np.random.default_rng(5).standard_normal((10, 10)))
    reference = logme(f, y)
    for transformed in (1e3 * f, 1e-3 * f, f @ rotation):
        assert logme(transformed, y) == pytest.approx(reference, rel=1e-9)


def test_logme_targets_and_degenerate_inputs():
    f, y = _classification_data(seed=6)
    assert logme(f, y[:, 1]) == logme(f, y[:, 1:])
    assert logme(f, y) == pytest.approx(np.mean([logme(f, y[:, 0]), logme(f, y[:, 1])]))
    # All-zero features explain nothing: the supremum is the noise-only model (α → ∞).
    target = y[:, 1]
    noise_only = -0.5 * (np.log(2 * np.pi * target @ target / len(target)) + 1)
    assert logme(np.zeros_like(f), target) == pytest.approx(noise_only)
    assert logme(f, target) > noise_only
    with pytest.raises(ValueError, match="all zero"):
        logme(f, np.zeros(len(f)))
    with pytest.raises(ValueError, match="expected features"):
        logme(f, y[:-1])


# --- LogME score on segmentation networks ----------------------------------------------------------------------


class LabelLike(nn.Module):
    """Features that carry the label: the image itself (images are noisy labels), and a constant channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.ones_like(x)], dim=1)


class Unrelated(nn.Module):
    """Features independent of the image: fixed noise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape[0], 2, *x.shape[2:], generator=torch.Generator().manual_seed(0))


def _segmentation_batches(spatial_dims: int, size: int, n: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    grid = torch.stack(torch.meshgrid(*[torch.arange(size)] * spatial_dims, indexing="ij"))
    centres = torch.randint(size // 4, 3 * size // 4, (n, spatial_dims), generator=g)
    labels = torch.stack([((grid - c.view(-1, *[1] * spatial_dims)) ** 2).sum(0) < (size // 4) ** 2 for c in centres])
    labels = labels[:, None].float()
    images = labels + 0.3 * torch.randn(labels.shape, generator=g)
    return [{"image": images[:2], "label": labels[:2]}, {"image": images[2:], "label": labels[2:]}]


def test_logme_score_prefers_label_carrying_features():
    batches = _segmentation_batches(2, 32)
    informative = logme_score(TinyNet(LabelLike()), batches)
    unrelated = logme_score(TinyNet(Unrelated()), batches)
    assert informative["level"] == "input_block"
    assert informative["score"] > unrelated["score"] + 0.1


@pytest.mark.parametrize("spatial_dims, size", [(2, 32), (3, 16)])
def test_logme_score_on_dynunet(spatial_dims, size):
    model = build_dynunet(spatial_dims)
    batches = _segmentation_batches(spatial_dims, size)
    result = logme_score(model, batches, max_pixels_per_image=64, seed=0)
    assert result["level"] == "downsamples.1" and result["feature_dim"] == 64
    assert result["n_images"] == 4 and result["n_pixels"] == 4 * 64 and result["n_foreground"] == 4 * 32
    assert math.isfinite(result["score"])
    assert logme_score(model, batches, max_pixels_per_image=64, seed=0) == result


def test_logme_score_balances_classes_up_to_availability():
    labels = torch.zeros(2, 1, 16, 16)
    labels[0, 0, :2, :3] = 1  # 6 foreground pixels in image 0, none in image 1
    batches = [{"image": torch.rand(2, 1, 16, 16), "label": labels}]
    result = logme_score(TinyNet(LabelLike()), batches, max_pixels_per_image=20)
    assert result["n_foreground"] == 6
    assert result["n_pixels"] == 6 + 10 + 10


def test_logme_score_needs_both_classes():
    batches = [{"image": torch.rand(2, 1, 16, 16), "label": torch.zeros(2, 1, 16, 16)}]
    with pytest.raises(ValueError, match="only one class"):
        logme_score(TinyNet(LabelLike()), batches)


def test_pre_norm_representation_is_the_last_spatial_convolution_before_normalisation():
    torch.manual_seed(0)
    model = build_dynunet(2).eval()
    images = torch.rand(3, 1, 32, 32)
    recorded = {}
    conv = model.downsamples[1].conv2.conv  # the level's last 3×3 convolution (UnetBasicBlock: conv2 → norm2)
    handle = conv.register_forward_hook(lambda _m, _a, out: recorded.setdefault("map", out.detach()))
    with torch.no_grad():
        pre = _feature_map(model, "downsamples.1", images, "pre_norm")
        post = _feature_map(model, "downsamples.1", images, "output")
    handle.remove()
    assert torch.equal(pre, recorded["map"]) and pre.shape == post.shape
    # instance normalisation erases the per-image channel means that the pre-normalisation map still has
    spread_pre = pre.mean(dim=(2, 3)).std(dim=0).mean()
    spread_post = post.mean(dim=(2, 3)).std(dim=0).mean()
    assert spread_pre > 2 * spread_post  # 0.029 vs 0.012 at this seed
    score = robustness_score(model, [{"image": images}], representation="pre_norm")
    assert score["representation"] == "pre_norm" and math.isfinite(score["score"])
    with pytest.raises(ValueError, match="unknown representation"):
        robustness_score(model, [{"image": images}], representation="post")
