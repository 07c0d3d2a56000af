"""Transferability of every checkpoint of a pretraining run, and its rank correlation with fine-tuned Dice.

:func:`score_checkpoints` scores each scheduled checkpoint (``run.json`` ``pretraining.checkpoints``) of a
pretraining run on a target manifest's images with the Hidy et al. robustness score (lower = more
transferable) and, when the target has labels, LogME (higher = more transferable); the scores go to
``<run>/transferability.json``. :func:`spearman_with_dice` relates them to the Dice each checkpoint reached
after fine-tuning.

Choice for DynUNet: ``pool=False``. Its instance normalisation standardises every channel per image, so
globally pooled vectors hardly differ between images and the pooled robustness score sits within ~0.003 of
the margin whatever the weights (0.497–0.499 measured); the flattened deepest-skip map keeps the differences.
Flattening needs equal image sizes, so target images are centre padded/cropped to one ``spatial_size``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medtransfer.analysis.compare import image_batches, load_network, read_run_json, stride_of
from medtransfer.analysis.transferability import logme_score, robustness_score

logger = logging.getLogger("medtransfer.analysis")

DEFAULT_N_IMAGES = 16
RESULT_FILE = "transferability.json"


def score_network(
    model: nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    pool: bool = False,
    seed: int = 0,
    level: str | None = None,
    with_logme: bool = True,
) -> dict:
    """``{"robustness", "logme"}`` of one network on prepared batches (LogME None without labels)."""
    robust = robustness_score(model, batches, level=level, seed=seed, pool=pool)
    result = {"robustness": robust["score"], "level": robust["level"], "n_images": robust["n_images"], "logme": None}
    if with_logme and all("label" in batch for batch in batches):
        try:
            result["logme"] = logme_score(model, batches, level=level, seed=seed)["score"]
        except ValueError as error:  # e.g. no foreground in the sampled images
            logger.warning("LogME not computed: %s", error)
    return result


def target_batches(
    manifest,
    spatial_size: Sequence[int],
    split: str = "validation",
    n_images: int | None = DEFAULT_N_IMAGES,
    seed: int = 0,
    batch_size: int = 4,
    data_root: str | Path | None = None,
    divisor: int = 1,
) -> list[dict]:
    """A fixed, seeded sample of a target manifest's images (with labels when it has them), one size."""
    from medtransfer.data import open_manifest

    if isinstance(manifest, (str, Path)):
        manifest = open_manifest(manifest, data_root)
    return image_batches(manifest, split, spatial_size=spatial_size, batch_size=batch_size, max_images=n_images,
                         seed=seed, with_label=manifest.has_labels, divisor=divisor)


def score_checkpoints(
    pretrain_run_dir: str | Path,
    manifest,
    split: str = "validation",
    n_images: int | None = DEFAULT_N_IMAGES,
    spatial_size: Sequence[int] | None = None,
    seed: int = 0,
    pool: bool = False,
    level: str | None = None,
    data_root: str | Path | None = None,
    write: bool = True,
) -> dict:
    """Score every scheduled checkpoint (and ``pretrained.pt`` if it is not one of them) of a pretraining run.

    Args:
        pretrain_run_dir: folder of a pretraining run (``run.json`` with ``pretraining.checkpoints``).
        manifest: target manifest (name, path or :class:`~medtransfer.data.Manifest`), same dimensionality.
        split: which target split to sample; ``n_images`` of it, a seeded sample (``None``: all).
        spatial_size: pad/crop size of the target images; default the run's ``patch_size``.
        seed: image sample, augmentations and derangement.
        pool: robustness score on pooled features (Hidy et al.) or flattened maps (default; see module doc).
        level: encoder level scored; default the deepest skip level.
        write: write ``<run>/transferability.json``.

    Returns:
        ``{"target", "split", "n_images", "pool", "spatial_size", "seed", "level", "checkpoints": [{"epoch",
        "path", "robustness", "logme"}]}``, ordered by epoch.
    """
    from medtransfer.atomic import save_json

    run_dir = Path(pretrain_run_dir)
    record = read_run_json(run_dir)
    config = record.get("config", {})
    pretraining = record.get("pretraining") or {}
    entries = list(pretraining.get("checkpoints") or [])
    if not entries:  # a run interrupted before run.json listed them: take them from disk
        entries = [{"epoch": int(p.stem.split("_")[1]), "path": str(p.relative_to(run_dir))}
                   for p in sorted((run_dir / "checkpoints").glob("epoch_*.pt"))]
    final = pretraining.get("final")
    if final and final.get("sha256") not in {e.get("sha256") for e in entries}:
        entries.append({"epoch": final["epoch"], "path": final["path"]})
    if not entries:
        raise FileNotFoundError(f"{run_dir}: no pretraining checkpoints (checkpoints/epoch_*.pt) found")
    size = list(spatial_size or config.get("patch_size") or [])
    if not size:
        raise ValueError("give spatial_size: the run's config has no patch_size")
    first = load_network(run_dir, checkpoint=entries[0]["path"])
    batches = target_batches(manifest, size, split, n_images, seed, data_root=data_root,
                             divisor=stride_of(first))
    rows = []
    for entry in sorted(entries, key=lambda e: e["epoch"]):
        network = load_network(run_dir, checkpoint=entry["path"])
        scores = score_network(network.model, batches, pool=pool, seed=seed, level=level)
        rows.append({"epoch": int(entry["epoch"]), "path": entry["path"], **scores})
        logger.info("checkpoint %s: robustness %.4f, LogME %s", entry["path"], scores["robustness"], scores["logme"])
    target_name = getattr(manifest, "name", str(manifest))
    result = {
        "target": target_name,
        "split": split,
        "n_images": rows[0]["n_images"],
        "pool": pool,
        "spatial_size": size,
        "seed": seed,
        "level": rows[0]["level"],
        "score_direction": {"robustness": "lower is better", "logme": "higher is better"},
        "checkpoints": rows,
    }
    if write:
        save_json(run_dir / RESULT_FILE, result)
    return result


def spearman_with_dice(
    scores: Mapping | Sequence[Mapping], dice_by_checkpoint: Mapping, score_key: str = "robustness"
) -> dict:
    """Spearman rank correlation between a checkpoint score and the Dice reached after fine-tuning from it.

    Args:
        scores: ``{checkpoint: score}``, or the ``checkpoints`` rows of :func:`score_checkpoints` (keyed by
            their ``epoch``), or its whole result.
        dice_by_checkpoint: ``{checkpoint: Dice}`` with the same keys (epochs).
        score_key: which score of the rows (``robustness`` or ``logme``).

    Returns:
        ``{"rho", "p_value", "n", "pairs": [[key, score, dice], ...], "score_key"}``; the robustness score
        is lower-is-better, so a useful score has a *negative* rho with Dice. rho is None for n < 3 or
        constant inputs.
    """
    from scipy.stats import spearmanr

    if isinstance(scores, Mapping) and "checkpoints" in scores:
        scores = scores["checkpoints"]
    if not isinstance(scores, Mapping):
        scores = {row["epoch"]: row[score_key] for row in scores}
    dice = {_key(k): v for k, v in dice_by_checkpoint.items()}
    pairs = [[k, float(v), float(dice[_key(k)])] for k, v in scores.items()
             if v is not None and _key(k) in dice and dice[_key(k)] is not None]
    rho = p_value = None
    if len(pairs) >= 3:
        scores_, dices = [p[1] for p in pairs], [p[2] for p in pairs]
        result = spearmanr(scores_, dices)
        if math.isfinite(result.statistic):
            rho, p_value = float(result.statistic), float(result.pvalue)
            if len(pairs) <= EXACT_MAX_N:  # the t approximation is wrong for a handful of checkpoints
                p_value = exact_spearman_p(scores_, dices, rho)
    return {"rho": rho, "p_value": p_value, "n": len(pairs), "pairs": pairs, "score_key": score_key}


EXACT_MAX_N = 8


def exact_spearman_p(x: Sequence[float], y: Sequence[float], rho: float) -> float:
    """Two-sided permutation p-value of Spearman's rho: the share of all n! orderings of y whose |rho| is at
    least the observed one. With n = 3 checkpoints even rho = 1 has p = 1/3, not the 0 the t approximation
    gives."""
    import itertools

    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    rx = (rx - rx.mean()) / np.linalg.norm(rx - rx.mean())
    centred = ry - ry.mean()
    norm = np.linalg.norm(centred)
    if norm == 0:
        return 1.0
    extreme = total = 0
    for order in itertools.permutations(range(len(ry))):
        total += 1
        extreme += abs(float(rx @ centred[list(order)]) / norm) >= abs(rho) - 1e-12
    return extreme / total


def _key(key):
    try:
        return int(key)
    except (TypeError, ValueError):
        return str(key)
