"""Per-case metrics for binary segmentation, computed with MONAI's metric implementations.

The numbers must be comparable with published MONAI / nnU-Net results, so the metrics themselves are never
re-implemented here: this module only validates inputs, turns them into the one-hot ``[1, 2, *spatial]`` batches
that ``monai.metrics`` expects, and settles the empty-mask cases that MONAI leaves as nan/inf.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

METRIC_NAMES = ("dice", "hd95", "surface_dice")

# Scores for the two cases in which MONAI's distance metrics are undefined (no surface to measure from/to).
# With exactly one empty mask, hd95 is the worst case: the image diagonal in mm (`worst_case_hd95`).
_BOTH_EMPTY = {"dice": 1.0, "hd95": 0.0, "surface_dice": 1.0}
_ONE_EMPTY = {"dice": 0.0, "surface_dice": 0.0}


def worst_case_hd95(shape, spacing=None) -> float:
    """The largest distance inside the image: its diagonal in mm (the HD95 of a prediction that misses all)."""
    voxel_size = _spacing_tuple(spacing, len(shape))
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, voxel_size))))


def case_metrics(pred, label, spacing=None, surface_tolerance_mm: float = 1.0) -> dict[str, float]:
    """Dice, HD95 and surface Dice of one binary prediction against its label, plus both volumes.

    Args:
        pred: binary prediction (bool or {0, 1}), 2D or 3D, no channel axis; numpy array or torch tensor.
        label: binary ground truth with the same spatial shape as ``pred``.
        spacing: voxel size in mm per axis (``None`` means 1.0 mm). HD95, surface Dice and the volumes are in
            physical units, so anisotropic scans are measured correctly.
        surface_tolerance_mm: a boundary voxel counts as correct for surface Dice when it lies within this
            distance (in mm) of the other mask's boundary.

    Returns:
        ``{"dice", "hd95", "surface_dice", "volume_pred", "volume_label"}`` as plain floats; volumes are
        voxel count x prod(spacing), i.e. mm^3 in 3D and mm^2 in 2D.

    Empty masks (MONAI would return nan/inf and warn; these conventions keep per-case tables aggregatable):
        * both empty: the prediction is perfect, so dice 1.0, hd95 0.0, surface_dice 1.0.
        * exactly one empty (an empty prediction of a non-empty label, or the reverse): dice 0.0 and
          surface_dice 0.0 (nothing matched), hd95 the worst case, the image diagonal in mm
          (:func:`worst_case_hd95`), so a missed structure never disappears from an HD95 mean as a nan would.
          Such cases are recognisable by ``volume_pred == 0 < volume_label`` (or the reverse), for counting.

    Raises:
        ValueError: if the shapes differ, the masks are not 2D/3D, a mask is not binary, or the spacing does
            not give one positive finite size per axis.
    """
    pred_t, label_t = _as_binary_tensor(pred, "pred"), _as_binary_tensor(label, "label")
    _check_shapes(pred_t, label_t)
    voxel_size = _spacing_tuple(spacing, pred_t.ndim)
    voxel_volume = math.prod(voxel_size)
    volumes = {
        "volume_pred": float(pred_t.sum()) * voxel_volume,
        "volume_label": float(label_t.sum()) * voxel_volume,
    }
    pred_empty, label_empty = not bool(pred_t.any()), not bool(label_t.any())
    if pred_empty and label_empty:
        return {**_BOTH_EMPTY, **volumes}
    if pred_empty or label_empty:
        return {**_ONE_EMPTY, "hd95": worst_case_hd95(tuple(pred_t.shape), voxel_size), **volumes}
    return {**_monai_scores(pred_t, label_t, voxel_size, surface_tolerance_mm), **volumes}


def _monai_scores(
    pred: torch.Tensor, label: torch.Tensor, spacing: tuple[float, ...], tolerance_mm: float
) -> dict[str, float]:
    """Run the three MONAI metrics on non-empty masks; background is excluded so only foreground is scored."""
    y_pred, y = _one_hot_batch(pred), _one_hot_batch(label)
    dice = compute_dice(y_pred, y, include_background=False)
    hd95 = compute_hausdorff_distance(y_pred, y, include_background=False, percentile=95, spacing=list(spacing))
    nsd = compute_surface_dice(
        y_pred, y, class_thresholds=[tolerance_mm], include_background=False, spacing=list(spacing)
    )
    return {"dice": float(dice.item()), "hd95": float(hd95.item()), "surface_dice": float(nsd.item())}


def _as_binary_tensor(mask, name: str) -> torch.Tensor:
    """Return ``mask`` as a CPU bool tensor, refusing anything but {0, 1} values.

    Thresholding silently would hide a caller passing probabilities or multi-label maps. CPU is used because
    MONAI's exact euclidean surface distance runs there (KD-tree) without needing cuCIM.
    """
    if not isinstance(mask, torch.Tensor):
        mask = torch.from_numpy(np.ascontiguousarray(mask))  # contiguous: flipped/strided views are common
    tensor = mask.detach().cpu()
    if tensor.dtype == torch.bool:
        return tensor
    is_binary = (tensor == 0) | (tensor == 1)
    if not bool(is_binary.all()):
        bad = torch.unique(tensor[~is_binary])[:5].tolist()
        raise ValueError(f"{name} must be binary (bool or values in {{0, 1}}); found other values such as {bad}")
    return tensor == 1


def _check_shapes(pred: torch.Tensor, label: torch.Tensor) -> None:
    """Shapes must match exactly and be 2D/3D; a channel axis here would be scored as a spatial one."""
    if pred.shape != label.shape:
        raise ValueError(f"pred and label shapes differ: pred {tuple(pred.shape)} vs label {tuple(label.shape)}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"masks must be 2D or 3D without a channel axis; got shape {tuple(pred.shape)}")


def _spacing_tuple(spacing, ndim: int) -> tuple[float, ...]:
    """Normalise spacing to plain Python floats, one per axis.

    MONAI's ``prepare_spacing`` only accepts Python ``int``/``float`` elements, so numpy float32 or tensor
    elements (as read from image headers) would be rejected there with an obscure message.
    """
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in np.asarray(spacing, dtype=float).reshape(-1))
    if len(values) != ndim:
        raise ValueError(f"spacing must have one value per axis ({ndim}); got {values}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing values must be positive and finite; got {values}")
    return values


def _one_hot_batch(mask: torch.Tensor) -> torch.Tensor:
    """``[*spatial]`` bool mask -> ``[1, 2, *spatial]`` float one-hot (background, foreground) as MONAI expects."""
    foreground = mask.float()
    return torch.stack([1.0 - foreground, foreground]).unsqueeze(0)


def volume_dice(slices) -> float:
    """Volumetric Dice of one volume from the `case_metrics` of ALL its slices (empty ones included).

    Each slice gives its overlap as dice·(volume_pred + volume_label)/2, so the volume's Dice
    2·ΣI / (ΣP + ΣL) is exact: false positives on slices without foreground count, which a mean of slice
    Dice (or slices with foreground only) hides. A volume whose masks are both empty scores 1.0."""
    overlap = predicted = labelled = 0.0
    for result in slices:
        p, l = float(result["volume_pred"]), float(result["volume_label"])
        predicted += p
        labelled += l
        if p > 0 and l > 0:
            overlap += float(result["dice"]) * (p + l) / 2
    if predicted + labelled == 0:
        return 1.0
    return 2 * overlap / (predicted + labelled)
