"""Centered kernel alignment (CKA) between layer representations, with linear kernels.

Three estimators, all accumulated in float64 whatever the feature dtype:

* :func:`linear_cka` — the biased estimator of Kornblith et al., "Similarity of Neural Network
  Representations Revisited", ICML 2019. Exact on the given examples, but biased upwards when the feature
  dimension is large relative to the number of examples (independent features do not score 0).
* :func:`unbiased_cka` — CKA built on the unbiased HSIC estimator of Song et al., "Feature Selection via
  Dependence Maximization", JMLR 2012 (:func:`unbiased_hsic`); independent features score ≈ 0.
* :class:`MinibatchCKA` — the minibatch estimator of Nguyen, Raghu & Kornblith, "Do Wide and Deep Networks
  Learn the Same Things?", ICLR 2021: unbiased HSICs are summed over minibatches, so comparing layers over
  a whole data set needs the memory of one minibatch only.

All functions take features as ``(n, p)``: one row per example. Convolutional feature maps are reduced to
that form with :func:`flatten_features` (:class:`MinibatchCKA` flattens each example itself).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FEATURE_MODES = ("flatten", "pool")

# Largest float64 block (elements) materialised while forming a Gram matrix: float32 feature maps of 3D
# networks can have ~10^7 values per example, and a whole float64 copy of a minibatch of them is not needed.
_GRAM_BLOCK_ELEMENTS = 1 << 24


def flatten_features(t: torch.Tensor, mode: str = "flatten") -> torch.Tensor:
    """Turn a batch of conv feature maps ``(n, C, *spatial)`` (2D: ``(n, C, H, W)``, 3D: ``(n, C, D, H, W)``)
    into one feature vector per example.

    Args:
        t: features of ``n`` examples; for ``"flatten"`` any ``(n, ...)`` tensor, for ``"pool"`` at least one
            spatial axis.
        mode:
            * ``"flatten"`` — each example's ``C·∏spatial`` values form one vector, ``(n, C·∏spatial)``: the
              convention of Kornblith et al. 2019 and Nguyen et al. 2021 for conv nets. It keeps the spatial
              layout, so two layers agree only if they represent the same things *at the same places*; it is
              sensitive to shifts of the layout, and its cost grows with the spatial size.
            * ``"pool"`` — global average over the spatial axes, ``(n, C)``. Translation invariant and cheap
              even for large 3D maps, but it discards where features fire, which is what a segmentation
              network is about.

    Default ``"flatten"``: it is the published convention, so numbers are comparable with the literature,
    and a segmentation U-Net's representations are spatial by nature — pooling would call layers similar
    that place their features differently. Its cost is affordable because every estimator here works on
    ``n × n`` Gram matrices, linear in the feature size; layers of different spatial size can still be
    compared, as CKA needs no common feature dimension. Use ``"pool"`` for translation-invariant comparisons.

    Returns:
        ``(n, C·∏spatial)`` for ``"flatten"``, ``(n, C)`` for ``"pool"``, in the input dtype.

    Raises:
        ValueError: for an unknown mode, or ``"pool"`` on a tensor without spatial axes.
    """
    if mode == "flatten":
        if t.ndim < 2:
            raise ValueError(f"expected features (n, ...), got shape {tuple(t.shape)}")
        return t.reshape(t.shape[0], -1)
    if mode == "pool":
        if t.ndim < 3:
            raise ValueError(f"'pool' needs feature maps (n, C, *spatial), got shape {tuple(t.shape)}")
        return t.mean(dim=tuple(range(2, t.ndim)))
    raise ValueError(f"unknown feature mode {mode!r}; expected one of {FEATURE_MODES}")


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Biased linear CKA of Kornblith et al. 2019 between two representations of the same examples.

    With column-centred features X (n, p), Y (n, q), linear kernels K = XXᵀ, L = YYᵀ and the centring
    matrix H = I − 11ᵀ/n::

        HSIC(K, L) = tr(K H L H) / (n − 1)²
        CKA        = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))
                   = ||YᵀX||_F² / (||XᵀX||_F · ||YᵀY||_F)

    Invariant to orthogonal transforms and isotropic scaling of either representation, in [0, 1]. The
    estimator is biased: for p, q ≫ n even independent features score well above 0 (see
    :func:`unbiased_cka`). Computed in feature space when n exceeds both feature dimensions, else through
    the n × n Gram matrices.

    Args:
        x: ``(n, p)`` features of ``n`` examples.
        y: ``(n, q)`` features of the same examples, in the same order.

    Returns:
        0-dim float64 tensor; nan if either representation is constant over the examples.

    Raises:
        ValueError: if the inputs are not 2D or disagree on ``n``.
    """
    _check_pair(x, y)
    n, p, q = x.shape[0], x.shape[1], y.shape[1]
    if n > max(p, q):
        xc, yc = x.to(torch.float64), y.to(torch.float64)
        xc, yc = xc - xc.mean(dim=0), yc - yc.mean(dim=0)
        return (yc.T @ xc).square().sum() / (torch.linalg.norm(xc.T @ xc) * torch.linalg.norm(yc.T @ yc))
    kc, lc = _center_gram(_gram(x)), _center_gram(_gram(y))
    return (kc * lc).sum() / (torch.linalg.norm(kc) * torch.linalg.norm(lc))


def unbiased_hsic(gram_x: torch.Tensor, gram_y: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator of Song et al. 2012, as used by Nguyen et al. 2021.

    With K̃, L̃ the Gram matrices K, L with their diagonals set to zero and 1 the all-ones vector::

        HSIC₁(K, L) = [ tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1 ] / (n(n−3))

    Unbiased for the population HSIC, so it can be negative. With linear kernels it is invariant to
    shifting the features, so they need no centring.

    Args:
        gram_x: ``(n, n)`` Gram matrix K of one representation.
        gram_y: ``(n, n)`` Gram matrix L of the other, over the same examples.

    Returns:
        0-dim float64 tensor.

    Raises:
        ValueError: if the matrices are not square of the same size, or ``n < 4``.
    """
    if gram_x.ndim != 2 or gram_x.shape[0] != gram_x.shape[1] or gram_x.shape != gram_y.shape:
        raise ValueError(
            f"expected two (n, n) Gram matrices, got shapes {tuple(gram_x.shape)} and {tuple(gram_y.shape)}"
        )
    n = gram_x.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs n >= 4 examples, got n = {n}")
    kt = gram_x.to(torch.float64) - torch.diag(gram_x.diagonal().to(torch.float64))
    lt = gram_y.to(torch.float64) - torch.diag(gram_y.diagonal().to(torch.float64))
    trace_kl = (kt * lt.T).sum()
    sums = kt.sum() * lt.sum() / ((n - 1) * (n - 2))
    cross = kt.sum(dim=0) @ lt.sum(dim=1)
    return (trace_kl + sums - 2.0 / (n - 2) * cross) / (n * (n - 3))


def unbiased_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA on the unbiased HSIC estimator (Nguyen et al. 2021), from all examples at once.

    With K = XXᵀ, L = YYᵀ (no centring needed, see :func:`unbiased_hsic`)::

        CKA₁ = HSIC₁(K, L) / sqrt(HSIC₁(K, K) · HSIC₁(L, L))

    Independent representations score ≈ 0 whatever p/n; invariant to orthogonal transforms and isotropic
    scaling. Equal to :class:`MinibatchCKA` fed the data as a single minibatch.

    Args:
        x: ``(n, p)`` features of ``n >= 4`` examples.
        y: ``(n, q)`` features of the same examples, in the same order.

    Returns:
        0-dim float64 tensor; nan if a self-HSIC is not positive (e.g. a constant representation).

    Raises:
        ValueError: if the inputs are not 2D, disagree on ``n``, or ``n < 4``.
    """
    _check_pair(x, y)
    k, m = _gram(x), _gram(y)
    return unbiased_hsic(k, m) / torch.sqrt(unbiased_hsic(k, k) * unbiased_hsic(m, m))


class MinibatchCKA:
    """Minibatch CKA of Nguyen et al. 2021 between every layer of set A and every layer of set B.

    For each minibatch, every layer's features X (batch, ...) are flattened per example and turned into a
    Gram matrix K = XXᵀ; the unbiased HSIC₁ (:func:`unbiased_hsic`) of each pair and of each layer with
    itself is added to running sums. After minibatches 1..m::

        CKA_ij = Σ_m HSIC₁(K_i, L_j) / sqrt(Σ_m HSIC₁(K_i, K_i) · Σ_m HSIC₁(L_j, L_j))

    Only ``(a, b)``, ``(a,)`` and ``(b,)`` float64 sums are kept between updates, so memory is bounded by one
    minibatch whatever the data set size. Each minibatch weighs the same, as in Nguyen et al.; use equal batch
    sizes (drop the last partial batch) to reproduce their estimator exactly. Reduce conv maps with
    :func:`flatten_features` first for ``"pool"`` mode; otherwise features are flattened as-is.

    Args:
        num_layers_a: number of layers in set A (rows of the result).
        num_layers_b: number of layers in set B (columns).

    Example::

        cka = MinibatchCKA(len(layers_a), len(layers_b))
        for batch in loader:
            cka.update(features_of(model_a, batch), features_of(model_b, batch))
        similarity = cka.compute()  # (len(layers_a), len(layers_b))
    """

    def __init__(self, num_layers_a: int, num_layers_b: int) -> None:
        if num_layers_a < 1 or num_layers_b < 1:
            raise ValueError(f"need at least one layer per set, got {num_layers_a} and {num_layers_b}")
        self.num_layers_a = num_layers_a
        self.num_layers_b = num_layers_b
        self.reset()

    def reset(self) -> None:
        """Forget all accumulated minibatches."""
        self.hsic_ab = torch.zeros(self.num_layers_a, self.num_layers_b, dtype=torch.float64)
        self.hsic_aa = torch.zeros(self.num_layers_a, dtype=torch.float64)
        self.hsic_bb = torch.zeros(self.num_layers_b, dtype=torch.float64)
        self.num_batches = 0

    @torch.no_grad()
    def update(
        self,
        features_a: torch.Tensor | Sequence[torch.Tensor],
        features_b: torch.Tensor | Sequence[torch.Tensor],
    ) -> None:
        """Add one minibatch.

        Args:
            features_a: one ``(batch, ...)`` tensor per layer of set A (a bare tensor for a single layer).
            features_b: likewise for set B; all tensors hold the same ``batch >= 4`` examples, in order.

        Raises:
            ValueError: on a wrong number of layers, disagreeing batch sizes, or ``batch < 4``.
        """
        grams_a = self._grams(features_a, self.num_layers_a, "a")
        grams_b = self._grams(features_b, self.num_layers_b, "b")
        if grams_a[0].shape != grams_b[0].shape:
            raise ValueError(f"batch sizes differ: {grams_a[0].shape[0]} (set a) vs {grams_b[0].shape[0]} (set b)")
        cross = [torch.stack([unbiased_hsic(ka, kb) for kb in grams_b]) for ka in grams_a]
        self.hsic_ab += torch.stack(cross).cpu()
        self.hsic_aa += torch.stack([unbiased_hsic(ka, ka) for ka in grams_a]).cpu()
        self.hsic_bb += torch.stack([unbiased_hsic(kb, kb) for kb in grams_b]).cpu()
        self.num_batches += 1

    def compute(self) -> torch.Tensor:
        """CKA of every (layer of A, layer of B) pair over the minibatches so far.

        Returns:
            ``(num_layers_a, num_layers_b)`` float64 tensor; nan where a layer's summed self-HSIC is not
            positive (e.g. a layer that is constant over the data).

        Raises:
            RuntimeError: if no minibatch has been added.
        """
        if self.num_batches == 0:
            raise RuntimeError("MinibatchCKA.compute() called before any update()")
        return self.hsic_ab / torch.sqrt(torch.outer(self.hsic_aa, self.hsic_bb))

    @staticmethod
    def _grams(features: torch.Tensor | Sequence[torch.Tensor], expected: int, name: str) -> list[torch.Tensor]:
        if isinstance(features, torch.Tensor):
            features = [features]
        if len(features) != expected:
            raise ValueError(f"expected {expected} feature tensors for set {name}, got {len(features)}")
        sizes = {t.shape[0] for t in features}
        if len(sizes) != 1:
            raise ValueError(f"batch sizes differ between the layers of set {name}: {sorted(sizes)}")
        return [_gram(flatten_features(t.detach(), "flatten")) for t in features]


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(
            f"expected (n, p) and (n, q) features, got shapes {tuple(x.shape)} and {tuple(y.shape)}; "
            "reduce feature maps with flatten_features() first"
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"the representations cover different numbers of examples: {x.shape[0]} vs {y.shape[0]}")


def _gram(x: torch.Tensor) -> torch.Tensor:
    """K = XXᵀ of ``(n, p)`` features in float64, casting at most ``_GRAM_BLOCK_ELEMENTS`` values at a time."""
    n = x.shape[0]
    gram = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for block in x.split(max(1, _GRAM_BLOCK_ELEMENTS // max(n, 1)), dim=1):
        block64 = block.to(torch.float64)
        gram = gram + block64 @ block64.T
    return gram


def _center_gram(k: torch.Tensor) -> torch.Tensor:
    """H K H with H = I − 11ᵀ/n: the Gram matrix of the column-centred features."""
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def jackknife_minibatch_cka(grams_a: Sequence[torch.Tensor], grams_b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Leave-one-image-out replicates of the minibatch CKA (:class:`MinibatchCKA`) of one layer pair.

    Replicate i drops image i from its minibatch (the row and column i of that minibatch's precomputed Gram
    matrices) and recomputes ``Σ_m HSIC₁(K, L) / sqrt(Σ_m HSIC₁(K, K) · Σ_m HSIC₁(L, L))``; see
    :func:`jackknife_interval`. The delete-one jackknife is the classical variance estimate for U-statistics
    (Arvesen 1969) and smooth functions of them. A bootstrap with replacement is not used: a drawn image's
    copies pair it with itself inside the U-statistic (HSIC₁'s 3- and 4-index terms), which turns part of
    it into the biased estimator and, at the 8 images of a minibatch, moved whole replicate distributions
    away from the estimate (measured on DynUNet features: estimate 0.48, bootstrap 95 % range 0.49–0.90).

    Replicates are ordered image by image (minibatch by minibatch), so layers or runs compared on the same
    images can be averaged replicate-wise to get the jackknife of an aggregate. Images of a minibatch of
    exactly 4 (the estimator's minimum) cannot be left out and get no replicate.

    Args:
        grams_a: one ``(n_m, n_m)`` Gram matrix K = XXᵀ per minibatch, representation A (``n_m >= 4``).
        grams_b: the matching Gram matrices of representation B, same minibatches and order.

    Returns:
        ``(Σ_m n_m,)`` float64 tensor (images of 4-example minibatches excluded); nan where undefined.

    Raises:
        ValueError: on no minibatches, mismatched Gram matrices or a minibatch under 4 examples.
    """
    if len(grams_a) == 0 or len(grams_a) != len(grams_b):
        raise ValueError(f"expected the same non-zero number of minibatch Gram matrices, got {len(grams_a)} and "
                         f"{len(grams_b)}")
    pairs = []
    for ka, kb in zip(grams_a, grams_b):
        if ka.ndim != 2 or ka.shape[0] != ka.shape[1] or ka.shape != kb.shape:
            raise ValueError(f"expected two (n, n) Gram matrices, got shapes {tuple(ka.shape)} and {tuple(kb.shape)}")
        if ka.shape[0] < 4:
            raise ValueError(f"the unbiased HSIC estimator needs n >= 4 examples per minibatch, got n = {ka.shape[0]}")
        pairs.append((ka.detach().to(device="cpu", dtype=torch.float64), kb.detach().to(device="cpu", dtype=torch.float64)))
    full = torch.stack([torch.stack([unbiased_hsic(ka, kb), unbiased_hsic(ka, ka), unbiased_hsic(kb, kb)])
                        for ka, kb in pairs])  # (batches, 3)
    total = full.sum(dim=0)
    replicates = []
    for m, (ka, kb) in enumerate(pairs):
        n = ka.shape[0]
        if n - 1 < 4:
            continue
        keep = ~torch.eye(n, dtype=torch.bool)
        index = torch.arange(n)
        rest = torch.stack([index[keep[i]] for i in range(n)])  # (n, n-1): the images left when i is dropped
        kt = ka[rest[:, :, None], rest[:, None, :]]
        lt = kb[rest[:, :, None], rest[:, None, :]]
        off = ~torch.eye(n - 1, dtype=torch.bool)
        kt, lt = kt * off, lt * off
        without = torch.stack([_batched_hsic(kt, lt, n - 1), _batched_hsic(kt, kt, n - 1), _batched_hsic(lt, lt, n - 1)], 1)
        sums = total - full[m] + without  # (n, 3)
        replicates.append(sums[:, 0] / torch.sqrt(sums[:, 1] * sums[:, 2]))
    return torch.cat(replicates) if replicates else torch.empty(0, dtype=torch.float64)


def jackknife_interval(estimate: float, replicates: torch.Tensor, level: float = 0.95) -> tuple[float, float]:
    """Normal interval ``estimate ± z · se`` with the delete-one jackknife standard error of the replicates,
    ``se² = (n−1)/n · Σ (θ₍ᵢ₎ − θ̄)²`` (Efron & Stein 1981). (nan, nan) with fewer than 2 finite replicates.
    The upper end is capped at 1 (CKA ≤ 1)."""
    from statistics import NormalDist

    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    finite = replicates[torch.isfinite(replicates)].to(torch.float64)
    n = finite.numel()
    if n < 2 or estimate is None or not torch.isfinite(torch.tensor(float(estimate))):
        return float("nan"), float("nan")
    se = float(torch.sqrt((n - 1) / n * (finite - finite.mean()).square().sum()))
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    return float(estimate) - z * se, min(1.0, float(estimate) + z * se)


def _batched_hsic(kt: torch.Tensor, lt: torch.Tensor, n: int) -> torch.Tensor:
    """:func:`unbiased_hsic` of ``(R, n, n)`` Gram matrices whose diagonals are already zero."""
    trace_kl = (kt * lt.transpose(1, 2)).sum(dim=(1, 2))
    sums = kt.sum(dim=(1, 2)) * lt.sum(dim=(1, 2)) / ((n - 1) * (n - 2))
    cross = (kt.sum(dim=1) * lt.sum(dim=2)).sum(dim=1)
    return (trace_kl + sums - 2.0 / (n - 2) * cross) / (n * (n - 3))
