"""Transferability scores: how well a (pre)trained network suits a target segmentation task, before training.

Two complementary scores, both computed on one encoder level (default: the deepest skip level,
:func:`medtransfer.analysis.features.encoder_levels` ``[-1]``):

* :func:`robustness_score` — label-free. Hidy, Bakos & Lukács, "Enhancing pretraining efficiency for medical
  image segmentation via transferability metrics", arXiv 2410.18677 (2024), as implemented in the authors'
  code (``aielte-research/MedSegPretrainImageNet``, ``src/robustness``): a contrastive triplet loss between two
  mild augmentations of each target image and another image. Lower = more transferable.
* :func:`logme_score` — label-aware. You, Liu, Wang & Long, "LogME: Practical Assessment of Pre-trained
  Models for Transfer Learning", ICML 2021: the maximum evidence of a Bayesian linear model predicting the
  labels from the features, here per pixel. Higher = more transferable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import convert_to_tensor
from torch import nn

from medtransfer.analysis.features import FeatureRecorder, encoder_levels, interpolate_at

DEFAULT_MARGIN = 0.5

# Mild intensity augmentation, in units of each image's own intensity range (see mild_intensity_augmentation).
GAMMA_RANGE = (0.8, 1.25)
SCALE_RANGE = (0.9, 1.1)
SHIFT_RANGE = (-0.1, 0.1)
NOISE_STD = 0.02

# LogME fixed-point iteration: stop when the relative change of λ = α/β is below _LOGME_RTOL.
_LOGME_MAX_ITER = 10_000
_LOGME_RTOL = 1e-10
_EPS = np.finfo(np.float64).eps


# ---------------------------------------------------------------------------------------------------------
# Robustness score (Hidy et al. 2024)
# ---------------------------------------------------------------------------------------------------------


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random derangement of ``0..n-1``: a permutation π with π(i) ≠ i for every i.

    Rejection sampling: uniform permutations are drawn until one has no fixed point. Every derangement is
    then equally likely; the acceptance rate is D(n)/n! → 1/e, so about e ≈ 2.7 draws are needed on average.

    Args:
        n: number of elements, ``n >= 2`` (no derangement of one element exists).
        generator: source of randomness; the same generator state gives the same derangement.

    Returns:
        ``(n,)`` int64 tensor.

    Raises:
        ValueError: if ``n < 2``.
    """
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2 elements, got {n}")
    identity = torch.arange(n)
    while True:
        perm = torch.randperm(n, generator=generator)
        if not bool((perm == identity).any()):
            return perm


def mild_intensity_augmentation(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random gamma, scale, shift and Gaussian noise, drawn independently per image.

    For an image ``x`` with intensities spanning ``[lo, hi]`` and ``u = (x − lo)/(hi − lo)`` ∈ [0, 1]::

        x' = lo + (hi − lo) · (s · u^γ + t + ε),   γ log-uniform in [0.8, 1.25], s ~ U[0.9, 1.1],
                                                   t ~ U[−0.1, 0.1],  ε ~ N(0, 0.02²) per voxel

    so on an image spanning [0, 1] (the package's preprocessing) ``x' = s·x^γ + t + ε``. The result is not
    clipped. Hidy et al. use torchvision ``ColorJitter(brightness=0.1, contrast=0.05, saturation=0.1,
    hue=0.05)`` on grey images repeated to RGB, which reduces to brightness ×[0.9, 1.1] and contrast
    ×[0.95, 1.05]; this augmentation adds gamma and noise, still well within what a segmentation network
    should be invariant to.

    Args:
        images: ``(B, C, *spatial)`` batch.
        generator: CPU generator for all random draws (the draws are device independent).

    Returns:
        Augmented batch, same shape, dtype and device.
    """
    batch = images.shape[0]
    per_image = (batch,) + (1,) * (images.ndim - 1)

    def uniform(low: float, high: float) -> torch.Tensor:
        draw = low + (high - low) * torch.rand(batch, generator=generator, dtype=torch.float64)
        return draw.to(device=images.device, dtype=images.dtype).reshape(per_image)

    gamma = torch.exp(uniform(math.log(GAMMA_RANGE[0]), math.log(GAMMA_RANGE[1])))
    scale, shift = uniform(*SCALE_RANGE), uniform(*SHIFT_RANGE)
    noise = NOISE_STD * torch.randn(images.shape, generator=generator, dtype=images.dtype).to(images.device)
    axes = tuple(range(1, images.ndim))
    lo = images.amin(dim=axes, keepdim=True)
    width = (images.amax(dim=axes, keepdim=True) - lo).clamp_min(torch.finfo(images.dtype).tiny)
    unit = (images - lo) / width
    return lo + width * (scale * unit.pow(gamma) + shift + noise)


def robustness_score(
    model: nn.Module,
    images: Iterable[torch.Tensor | Mapping[str, torch.Tensor]],
    level: str | None = None,
    margin: float = DEFAULT_MARGIN,
    seed: int = 0,
    device: str | torch.device | None = None,
    pool: bool = True,
    representation: str = "output",
) -> dict:
    """Hidy et al. (2024) robustness score of a network's encoder on target images; lower is better.

    For each of the N target images x_i, two independent augmentations q_i = T(x_i), k_i = T'(x_i) (see
    :func:`mild_intensity_augmentation`) are embedded by the level-ℓ feature map, globally average-pooled
    to a C-vector. With the cosine distance d(a, b) = 1 − ⟨a, b⟩/(‖a‖‖b‖) and a derangement π of the N
    images (:func:`derangement`)::

        r_i = max(0, d(q_i, k_i) − d(q_i, k_π(i)) + m),      R = (1/N) Σ_i r_i

    A representation that is invariant to the augmentation yet tells images apart scores low; one that
    maps every image alike scores exactly m (then d(q_i, k_i) = d(q_i, k_π(i))).

    Differences from the authors' code: their negative pairing (reverse the batch, roll by 2) pairs one
    image with itself when N is odd; here π is a derangement over *all* N images. All pooled vectors are
    collected first (C floats per image) and deranged together, so the negatives are not confined to a
    batch and batches of any size work.

    Args:
        model: a network whose levels :mod:`medtransfer.analysis.features` knows; put in eval mode and run
            without gradients for the score, its training flags restored afterwards.
        images: batches ``(B, C, *spatial)``, or dicts with an ``"image"`` entry (a data loader's batches).
        level: level name (see :func:`medtransfer.analysis.features.layer_names`); default the deepest skip
            level, Hidy et al.'s default (``level = -2``: the last encoder map before the bottleneck).
        margin: m; Hidy et al.'s default is 0.5.
        seed: seeds the augmentations (drawn batch by batch, in order) and the derangement.
        device: where the images are sent (the model must be there); default the device of its parameters.
        pool: global average pooling of the map (the default, as in Hidy et al., whose networks use batch
            normalisation); ``False`` compares the flattened maps (all images must then have the same size).
            With instance normalisation (DynUNet's default) every channel is standardised per image before
            its activation, so pooled vectors hardly differ between images and pooled scores sit within
            ~0.005 of m (randomly initialised ``build_dynunet(2)``, with or without perturbed norm affines);
            flattened maps keep the differences (scores ≈ 0.02–0.07 in the same setting).
        representation: ``"output"`` (the level's output, Hidy et al.) or ``"pre_norm"`` (its last spatial
            convolution before normalisation; see :func:`_feature_map` and benchmarks/robustness_resolution.py).

    Returns:
        ``{"score": R, "per_image": [r_i in input order], "level": ℓ, "n_images": N, "margin": m}``.

    Raises:
        ValueError: for fewer than 2 images, or an unknown level.
    """
    level = level or encoder_levels(model)[-1]
    device = _device_of(model) if device is None else torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    queries, keys = [], []
    with _evaluating(model):
        for batch in images:
            x = _tensor(batch, "image").to(device)
            queries.append(_embedding(model, level, mild_intensity_augmentation(x, generator), pool, representation))
            keys.append(_embedding(model, level, mild_intensity_augmentation(x, generator), pool, representation))
    n = sum(len(q) for q in queries)
    if n < 2:
        raise ValueError(f"the robustness score needs at least 2 images (for negatives), got {n}")
    q, k = torch.cat(queries), torch.cat(keys)
    negatives = k[derangement(n, generator)]
    per_image = (_cosine_distance(q, k) - _cosine_distance(q, negatives) + margin).clamp_min(0.0)
    return {
        "score": float(per_image.mean()),
        "per_image": per_image.tolist(),
        "level": level,
        "n_images": n,
        "margin": float(margin),
        "representation": representation,
    }


def _cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise d(a, b) = 1 − cos(a, b); rows of zeros have cosine 0."""
    return 1.0 - F.cosine_similarity(a, b, dim=1)


def _embedding(model: nn.Module, level: str, images: torch.Tensor, pool: bool,
               representation: str = "output") -> torch.Tensor:
    """``(B, C)`` pooled (or ``(B, C·∏spatial)`` flattened) float64 CPU features of one level."""
    maps = _feature_map(model, level, images, representation)
    vectors = maps.mean(dim=tuple(range(2, maps.ndim))) if pool else maps.flatten(1)
    return vectors.to(device="cpu", dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------
# LogME (You et al. 2021)
# ---------------------------------------------------------------------------------------------------------


class Evidence(NamedTuple):
    """Maximum log evidence per sample of LogME's Bayesian linear model, with the maximising precisions."""

    log_evidence: float  # L(α, β) / n
    alpha: float  # prior precision of the weights
    beta: float  # noise precision


def logme(features: np.ndarray, targets: np.ndarray) -> float:
    """LogME of You et al. (ICML 2021): mean over target columns of :func:`logme_evidence`; higher is better.

    For classification the paper uses the one-hot encoding of the labels, one column per class.

    Args:
        features: ``(n, D)`` features, one row per sample.
        targets: ``(n,)`` one target, or ``(n, K)`` targets (e.g. one-hot labels), each fitted separately.

    Returns:
        The average maximum log evidence per sample (a float, any sign).

    Raises:
        ValueError: on mismatched shapes, or a target column that is all zero (its evidence is unbounded).
    """
    f, y = _logme_inputs(features, targets)
    sigma, v = _gram_eigen(f)
    return float(np.mean([_fit_column(f, sigma, v, y[:, j]).log_evidence for j in range(y.shape[1])]))


def logme_evidence(features: np.ndarray, target: np.ndarray) -> Evidence:
    """Maximum evidence of a Bayesian linear model of one target, by the fixed point of You et al. (2021).

    Model: y = F w + ε, prior w ~ N(0, α⁻¹ I_D), noise ε ~ N(0, β⁻¹ I_n). The log evidence (marginal
    likelihood) is, with A = αI + βFᵀF and m = βA⁻¹Fᵀy the posterior mean of w::

        L(α, β) = D/2 log α + n/2 log β − n/2 log 2π − β/2 ‖Fm − y‖² − α/2 mᵀm − 1/2 log |A|

    Algorithm 1 of the paper: with FᵀF = V diag(σ) Vᵀ, start at α = β = 1 and iterate ::

        γ = Σ_i βσ_i / (α + βσ_i),   m = β V diag(1/(α + βσ)) Vᵀ Fᵀy,
        α ← γ / mᵀm,                 β ← (n − γ) / ‖Fm − y‖²

    until λ = α/β changes by less than a relative 1e-10 (about ten iterations when n ≫ D; hundreds or more
    when n ≈ D), at most 10⁴ times; then return L(α, β)/n, evaluated with m at the final (α, β). When the
    features can interpolate y (n ≤ rank F) the maximum may lie at β → ∞; the iteration then stalls near
    that supremum. log |A| = Σ_i log(α + βσ_i) runs over all D eigenvalues,
    so directions outside the span of the features contribute log α each. Where the features explain y too
    little (always when Fᵀy = 0, e.g. all-zero features) L increases with α and the iteration diverges
    (λ → ∞); the supremum is then the noise-only model w = 0, L/n = −1/2 (log(2π‖y‖²/n) + 1), returned with
    α = ∞.

    The maximum is invariant to rescaling the features (α absorbs the scale) and to rotating them.

    Args:
        features: ``(n, D)`` features.
        target: ``(n,)`` target values, not all zero.

    Returns:
        :class:`Evidence` with L/n and the maximising α, β.
    """
    f, y = _logme_inputs(features, target)
    if y.shape[1] != 1:
        raise ValueError(f"expected a single target column, got {y.shape[1]}")
    sigma, v = _gram_eigen(f)
    return _fit_column(f, sigma, v, y[:, 0])


def _logme_inputs(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    if f.ndim != 2 or y.ndim != 2 or f.shape[0] != y.shape[0]:
        raise ValueError(f"expected features (n, D) and targets (n,) or (n, K), got {f.shape} and {y.shape}")
    if not np.all(np.isfinite(f)) or not np.all(np.isfinite(y)):
        raise ValueError("features and targets must be finite")
    empty = [j for j in range(y.shape[1]) if not np.any(y[:, j])]
    if empty:
        raise ValueError(f"target columns {empty} are all zero; their evidence is unbounded")
    return f, y


def _gram_eigen(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues σ and eigenvectors V of FᵀF (the paper's 'SVD of FᵀF').

    Eigenvalues at or below the rounding error of the decomposition, max(σ)·max(n, D)·eps, are set to
    exactly 0: they are directions outside the span of the features (numerical rank).
    """
    sigma, v = np.linalg.eigh(f.T @ f)
    rounding = max(float(sigma.max(initial=0.0)), 0.0) * max(f.shape) * _EPS
    return np.where(sigma > rounding, sigma, 0.0), v


def _fit_column(f: np.ndarray, sigma: np.ndarray, v: np.ndarray, y: np.ndarray) -> Evidence:
    """The fixed-point iteration of :func:`logme_evidence` for one target column, in the eigenbasis of FᵀF.

    With z = VᵀFᵀy and λ = α/β, the quantities of an iteration are sums over the D eigenvalues::

        γ = Σ σ/(σ + λ),   mᵀm = Σ z²/(σ + λ)²,   ‖Fm − y‖² = ‖y‖² − Σ z² (σ + 2λ)/(σ + λ)²

    so an iteration costs O(D) instead of O(nD); the evidence is then evaluated directly. The residual is
    floored at eps·‖y‖², below which its cancellation leaves only rounding errors. Once λ exceeds
    max(σ)/eps the weights are zero to rounding: the iteration is heading for the noise-only supremum.
    """
    n = f.shape[0]
    z = v.T @ (f.T @ y)
    z[sigma == 0] = 0.0  # outside the span of F, VᵀFᵀy is 0 up to rounding
    if not np.any(z):
        return _noise_only(y)
    z2, yy, lam_max = z**2, float(y @ y), float(sigma.max()) / _EPS
    alpha, beta = 1.0, 1.0
    for _ in range(_LOGME_MAX_ITER):
        lam = alpha / beta
        gamma = float(np.sum(sigma / (sigma + lam)))
        mm = float(np.sum(z2 / (sigma + lam) ** 2))
        residual = max(yy - float(np.sum(z2 * (sigma + 2 * lam) / (sigma + lam) ** 2)), _EPS * yy)
        alpha, beta = gamma / mm, (n - gamma) / residual
        if alpha / beta > lam_max:
            return _noise_only(y)
        if abs(alpha / beta - lam) <= _LOGME_RTOL * lam:
            break
    return Evidence(_log_evidence(f, sigma, v, z, y, alpha, beta) / n, alpha, beta)


def _noise_only(y: np.ndarray) -> Evidence:
    """The α → ∞ limit, w = 0 and y ~ N(0, β⁻¹I) with β = n/‖y‖²: L/n = −1/2 (log(2π‖y‖²/n) + 1)."""
    n, yy = len(y), float(y @ y)
    return Evidence(-0.5 * (math.log(2 * math.pi * yy / n) + 1.0), math.inf, n / yy)


def _log_evidence(
    f: np.ndarray, sigma: np.ndarray, v: np.ndarray, z: np.ndarray, y: np.ndarray, alpha: float, beta: float
) -> float:
    """L(α, β) of :func:`logme_evidence`, with m the posterior mean at (α, β)."""
    n, d = f.shape
    m = v @ (beta * z / (alpha + beta * sigma))
    return (
        d / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - n / 2 * math.log(2 * math.pi)
        - beta / 2 * float(np.sum((f @ m - y) ** 2))
        - alpha / 2 * float(m @ m)
        - 0.5 * float(np.sum(np.log(alpha + beta * sigma)))
    )


def logme_score(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    level: str | None = None,
    max_pixels_per_image: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict:
    """LogME of a network's level-ℓ features for the per-pixel foreground/background labels; higher is better.

    Segmentation is classification of pixels, so the samples of :func:`logme` are pixels: for each image,
    up to ⌊max/2⌋ foreground and ⌈max/2⌉ background pixels are drawn at random (fewer where a class has
    fewer pixels; images without foreground still contribute background). Their features are the level's
    feature map interpolated (bi/trilinearly) to the label's resolution at those pixels
    (:func:`medtransfer.analysis.features.interpolate_at`), so coarse levels are compared at the
    resolution of the task. Targets are the one-hot labels (background, foreground), two columns, as the
    paper does for classification; the score is the mean of the two columns' evidence.

    Args:
        model: the network, put in eval mode and run without gradients (training flags restored).
        batches: dicts with ``"image"`` ``(B, C, *spatial)`` and binary ``"label"`` ``(B, 1, *spatial')``
            (foreground = label > 0.5).
        level: level name; default the deepest skip level (as :func:`robustness_score`).
        max_pixels_per_image: at most this many pixels per image, ``>= 2``.
        seed: seeds the pixel sampling.
        device: where the images are sent (the model must be there); default the device of its parameters.

    Returns:
        ``{"score", "level", "n_images", "n_pixels", "n_foreground", "feature_dim"}``.

    Raises:
        ValueError: if the sampled pixels are all of one class, or on malformed labels.
    """
    if max_pixels_per_image < 2:
        raise ValueError(f"max_pixels_per_image must be >= 2, got {max_pixels_per_image}")
    level = level or encoder_levels(model)[-1]
    device = _device_of(model) if device is None else torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    features, targets, n_images = [], [], 0
    with _evaluating(model):
        for batch in batches:
            maps = _feature_map(model, level, _tensor(batch, "image").to(device))
            for fmap, mask in zip(maps, _foreground(_tensor(batch, "label"))):
                points = _balanced_pixels(mask, max_pixels_per_image, generator)
                features.append(interpolate_at(fmap, points, mask.shape).to(device="cpu", dtype=torch.float64))
                targets.append(mask[tuple(points.T)])
                n_images += 1
    f, y = torch.cat(features).numpy(), torch.cat(targets).numpy().astype(np.float64)
    if y.min() == y.max():
        raise ValueError("LogME needs foreground and background pixels; the labels have only one class")
    return {
        "score": logme(f, np.stack([1.0 - y, y], axis=1)),
        "level": level,
        "n_images": n_images,
        "n_pixels": int(y.size),
        "n_foreground": int(y.sum()),
        "feature_dim": int(f.shape[1]),
    }


def _foreground(labels: torch.Tensor) -> torch.Tensor:
    """``(B, *spatial)`` boolean foreground masks of ``(B, 1, *spatial)`` binary labels, on the CPU."""
    if labels.ndim < 3 or labels.shape[1] != 1:
        raise ValueError(f"expected binary labels (B, 1, *spatial), got shape {tuple(labels.shape)}")
    return labels[:, 0].detach().cpu() > 0.5


def _balanced_pixels(mask: torch.Tensor, max_pixels: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, ndim)`` positions: up to ⌊max/2⌋ random foreground and ⌈max/2⌉ random background pixels."""
    quota = {True: max_pixels // 2, False: max_pixels - max_pixels // 2}
    chosen = []
    for value, count in quota.items():
        candidates = (mask == value).nonzero()
        chosen.append(candidates[torch.randperm(len(candidates), generator=generator)[:count]])
    return torch.cat(chosen)


# ---------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------


REPRESENTATIONS = ("output", "pre_norm")


def _feature_map(model: nn.Module, level: str, images: torch.Tensor, representation: str = "output") -> torch.Tensor:
    """A level's features ``(B, C, *spatial)`` for a batch (the whole network runs once).

    ``representation="output"`` is the level's output (after its normalisation and activation);
    ``"pre_norm"`` is the output of the level's last spatial convolution (kernel > 1, in forward order), i.e.
    the map *before* the normalisation that follows it. Instance normalisation standardises every channel
    per image, which erases what pooled features could tell apart; the pre-normalisation map keeps each
    image's channel means and scales.
    """
    if representation not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {representation!r}; choose one of {REPRESENTATIONS}")
    if representation == "output":
        with FeatureRecorder(model, [level]) as recorder:
            model(images)
        return recorder.features[level]
    root = getattr(model, "module", model)
    block = root.get_submodule(level)
    convs = [m for m in block.modules() if isinstance(m, nn.modules.conv._ConvNd) and max(m.kernel_size) > 1]
    if not convs:
        raise ValueError(f"level {level!r} has no spatial convolution for the pre-normalisation features")
    outputs: list[torch.Tensor] = []
    handles = [conv.register_forward_hook(lambda _m, _a, out: outputs.append(out.detach())) for conv in convs]
    try:
        model(images)
    finally:
        for handle in handles:
            handle.remove()
    return outputs[-1]


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; every submodule's training flag is restored on exit."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in flags:
            module.training = training


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device


def _tensor(batch: torch.Tensor | Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    """A batch's tensor (a dict batch's ``key`` entry), as a plain tensor (MONAI metadata dropped)."""
    value = batch[key] if isinstance(batch, Mapping) else batch
    return convert_to_tensor(value, track_meta=False)
