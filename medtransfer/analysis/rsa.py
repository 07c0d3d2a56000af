"""Representational similarity analysis (RSA) between layer representations.

Following Goerttler & Obermayer, "Exploring the Similarity of Representations in Model-Agnostic
Meta-Learning" (Learning to Learn workshop, ICLR 2021), after Kriegeskorte et al., "Representational
similarity analysis — connecting the branches of systems neuroscience" (2008): each representation is
summarised by the dissimilarities between all pairs of examples (its RDM), and two representations are
compared by the rank correlation of their RDMs.
Only the ordering of dissimilarities matters, so the comparison needs no common feature space.

Features are ``(n, p)``, one row per example; reduce conv feature maps with
:func:`medtransfer.analysis.cka.flatten_features` first.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr


def rdm(features: torch.Tensor | np.ndarray) -> np.ndarray:
    """Representational dissimilarity matrix: correlation distance between every pair of examples.

    ``RDM[i, j] = 1 − ρ(x_i, x_j)``, with ρ the Pearson correlation across the ``p`` features of examples i
    and j. Symmetric, zero on the diagonal, values in [0, 2].

    Args:
        features: ``(n, p)`` features of ``n`` examples, ``p >= 2``; torch tensor (any device) or array.

    Returns:
        ``(n, n)`` float64 array.

    Raises:
        ValueError: if ``features`` is not 2D, ``p < 2``, or an example's features are constant (its
            correlation with anything is undefined).
    """
    x = _as_float64(features)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(
            f"expected (n, p) features with p >= 2, got shape {x.shape}; "
            "reduce feature maps with flatten_features()"
        )
    x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1)
    constant = np.flatnonzero(norms == 0)
    if constant.size:
        raise ValueError(f"examples {constant.tolist()} have constant features; their correlation is undefined")
    z = x / norms[:, None]
    dissimilarity = 1.0 - np.clip(z @ z.T, -1.0, 1.0)
    np.fill_diagonal(dissimilarity, 0.0)
    return dissimilarity


def rsa(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """RSA score: Spearman correlation between the upper triangles (diagonal excluded) of the two RDMs.

    ``RSA = spearman( triu(RDM_a, k=1), triu(RDM_b, k=1) )``, see :func:`rdm`. 1 for representations that
    order all example pairs alike; ≈ 0 for unrelated ones.

    Args:
        features_a: ``(n, p)`` features of ``n >= 3`` examples.
        features_b: ``(n, q)`` features of the same examples, in the same order.

    Returns:
        The Spearman correlation as a float; nan if one RDM has all off-diagonal entries equal.

    Raises:
        ValueError: if the representations cover different numbers of examples, ``n < 3``, or :func:`rdm`
            rejects them.
    """
    rdm_a, rdm_b = rdm(features_a), rdm(features_b)
    n = rdm_a.shape[0]
    if rdm_b.shape[0] != n:
        raise ValueError(f"the representations cover different numbers of examples: {n} vs {rdm_b.shape[0]}")
    if n < 3:
        raise ValueError(f"RSA needs n >= 3 examples (at least 3 pairs), got n = {n}")
    upper = np.triu_indices(n, k=1)
    return float(spearmanr(rdm_a[upper], rdm_b[upper]).statistic)


def _as_float64(features: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        return features.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(features, dtype=np.float64)


def rdm_from_gram(gram: torch.Tensor | np.ndarray, row_sums: torch.Tensor | np.ndarray, p: int) -> np.ndarray:
    """The :func:`rdm` of ``(n, p)`` features from their Gram matrix ``G = XXᵀ`` and row sums ``s = X1``.

    Centring each example over its features gives ``G'_ij = G_ij − s_i s_j / p``, so
    ``RDM_ij = 1 − G'_ij / sqrt(G'_ii G'_jj)``: the same numbers as :func:`rdm` without holding the features,
    which lets RSA use exactly the flattened feature maps that the minibatch CKA reduces to Gram matrices.

    Raises:
        ValueError: on mismatched shapes, ``p < 2``, or an example whose features are constant.
    """
    g, s = _as_float64(gram), _as_float64(row_sums)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or s.shape != (g.shape[0],) or p < 2:
        raise ValueError(f"expected an (n, n) Gram matrix, (n,) row sums and p >= 2, got {g.shape}, {s.shape}, {p}")
    centred = g - np.outer(s, s) / p
    variance = np.diag(centred).copy()
    constant = np.flatnonzero(variance <= 1e-12 * max(float(np.abs(np.diag(g)).max()), 1e-300))
    if constant.size:
        raise ValueError(f"examples {constant.tolist()} have constant features; their correlation is undefined")
    scale = np.sqrt(variance)
    dissimilarity = 1.0 - np.clip(centred / np.outer(scale, scale), -1.0, 1.0)
    np.fill_diagonal(dissimilarity, 0.0)
    return dissimilarity


def rsa_within_groups(rdms_a: list[np.ndarray], rdms_b: list[np.ndarray]) -> float:
    """RSA over the example pairs *within* each group (e.g. minibatch): the Spearman correlation between the
    pooled upper triangles of the groups' RDMs (A) and of the matching RDMs (B). One group of all examples is
    :func:`rsa`. Returns nan if one side's pooled dissimilarities are all equal.

    Raises:
        ValueError: on different numbers of groups, mismatched RDM sizes, or fewer than 3 pairs in all.
    """
    if len(rdms_a) != len(rdms_b):
        raise ValueError(f"different numbers of groups: {len(rdms_a)} vs {len(rdms_b)}")
    upper_a, upper_b = [], []
    for a, b in zip(rdms_a, rdms_b):
        if a.shape != b.shape:
            raise ValueError(f"RDMs of one group differ in size: {a.shape} vs {b.shape}")
        upper = np.triu_indices(a.shape[0], k=1)
        upper_a.append(a[upper])
        upper_b.append(b[upper])
    pairs_a, pairs_b = np.concatenate(upper_a or [np.empty(0)]), np.concatenate(upper_b or [np.empty(0)])
    if pairs_a.size < 3:
        raise ValueError(f"RSA needs at least 3 example pairs, got {pairs_a.size}")
    return float(spearmanr(pairs_a, pairs_b).statistic)
