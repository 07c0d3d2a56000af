"""Connected-component post-processing of binary masks, and the nnU-Net rule that decides whether to use it.

Two operations: keep the largest connected component, or remove the components smaller than a physical size
(mm³ in 3D, mm² in 2D, from the voxel spacing). Which one a model uses is learned once, at the end of training,
on the validation split (``choose_postprocessing``): a candidate is adopted only if it does not lower the mean
Dice, as nnU-Net does. The choice is a small dict (``{"method": ..., "min_size": ...}``) stored in run.json and
in an exported bundle's metadata, and applied by ``segment`` and by the bundle's inference config
(``PostprocessMaskd``).

Components are found with ``scipy.ndimage.label`` at full connectivity (diagonal neighbours join, as in MONAI's
``KeepLargestConnectedComponent`` default), so a thin connection never splits an organ in two.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform
from scipy import ndimage

NONE = "none"
KEEP_LARGEST = "keep_largest_component"
REMOVE_SMALL = "remove_small_components"
METHODS = (NONE, KEEP_LARGEST, REMOVE_SMALL)
# The size threshold the rule tries, as a fraction of the smallest foreground component seen in the validation
# labels: a component much smaller than any real one is noise.
SMALL_FRACTION_OF_SMALLEST_LABEL = 0.1


class PostprocessError(ValueError):
    """A post-processing setting that cannot be applied (unknown method, missing or non-positive size)."""


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    return ndimage.label(mask.astype(bool), structure=structure)


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a binary mask (same shape and dtype); an empty mask stays empty."""
    labels, count = _components(mask)
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())[1:]
    return (labels == int(np.argmax(sizes)) + 1).astype(mask.dtype)


def remove_small_components(mask: np.ndarray, min_size: float, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Drop components smaller than ``min_size`` (mm³ in 3D, mm² in 2D; voxel volume = prod(spacing))."""
    if not (isinstance(min_size, (int, float)) and math.isfinite(min_size) and min_size > 0):
        raise PostprocessError(f"remove_small_components: min_size must be a positive number, got {min_size!r}")
    voxel = _voxel_size(spacing, mask.ndim)
    labels, count = _components(mask)
    if count == 0:
        return mask.copy()
    sizes = np.bincount(labels.ravel()) * voxel
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels].astype(mask.dtype)


def _voxel_size(spacing: Sequence[float] | None, ndim: int) -> float:
    if spacing is None:
        return 1.0
    values = [float(s) for s in spacing][:ndim]
    if len(values) != ndim or not all(math.isfinite(v) and v > 0 for v in values):
        raise PostprocessError(f"spacing {list(spacing)} does not give {ndim} positive sizes")
    return float(np.prod(values))


def check_postprocessing(spec: Mapping | None, where: str = "postprocessing") -> dict | None:
    """A validated copy of a post-processing setting (None or method "none" mean: nothing)."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping) or spec.get("method") not in METHODS:
        method = spec.get("method") if isinstance(spec, Mapping) else spec
        raise PostprocessError(f"{where}: unknown post-processing method {method!r}; expected one of {METHODS}")
    if spec["method"] == NONE:
        return None
    checked = {"method": spec["method"]}
    if spec["method"] == REMOVE_SMALL:
        size = spec.get("min_size")
        if not (isinstance(size, (int, float)) and not isinstance(size, bool) and math.isfinite(size) and size > 0):
            raise PostprocessError(f"{where}: remove_small_components needs a positive min_size, got {size!r}")
        checked["min_size"] = float(size)
    return checked


def apply_postprocessing(mask: np.ndarray, spec: Mapping | None, spacing: Sequence[float] | None = None) -> np.ndarray:
    """``mask`` after the setting ``spec`` (see ``check_postprocessing``); unchanged when it is None."""
    spec = check_postprocessing(spec)
    if spec is None:
        return mask
    if spec["method"] == KEEP_LARGEST:
        return keep_largest_component(mask)
    return remove_small_components(mask, spec["min_size"], spacing)


def description(spec: Mapping | None) -> str:
    spec = check_postprocessing(spec)
    if spec is None:
        return "none"
    if spec["method"] == KEEP_LARGEST:
        return "keep the largest connected component"
    return f"remove connected components smaller than {spec['min_size']:g} (mm³ in 3D, mm² in 2D)"


def _dice(pred: np.ndarray, label: np.ndarray) -> float:
    total = int(pred.sum()) + int(label.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, label).sum()) / total


def smallest_label_component(labels: Sequence[np.ndarray], spacings: Sequence[Sequence[float] | None]) -> float | None:
    """The size (mm³ / mm²) of the smallest foreground component over the given label masks."""
    smallest = None
    for label, spacing in zip(labels, spacings):
        components, count = _components(label)
        if count:
            size = float(np.bincount(components.ravel())[1:].min()) * _voxel_size(spacing, label.ndim)
            smallest = size if smallest is None else min(smallest, size)
    return smallest


def choose_postprocessing(
    predictions: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    spacings: Sequence[Sequence[float] | None],
    min_size: float | None = None,
) -> dict:
    """nnU-Net's rule on validation cases: the candidate with the best mean Dice, if it does not lower it.

    Candidates: keep the largest component, and remove components below ``min_size`` (default: a tenth of the
    smallest foreground component in ``labels``). Returns ``{"method", ["min_size"], "validation_dice": {...},
    "n_cases"}``; method "none" when every candidate lowers the mean Dice.
    """
    if not predictions or len(predictions) != len(labels) or len(labels) != len(spacings):
        raise PostprocessError(
            f"choose_postprocessing needs as many predictions, labels and spacings (got {len(predictions)}, "
            f"{len(labels)}, {len(spacings)}; at least one case)"
        )
    if min_size is None:
        smallest = smallest_label_component(labels, spacings)
        min_size = None if smallest is None else smallest * SMALL_FRACTION_OF_SMALLEST_LABEL
    candidates = [{"method": KEEP_LARGEST}]
    if min_size:
        candidates.append({"method": REMOVE_SMALL, "min_size": round(float(min_size), 4)})
    scores = {NONE: float(np.mean([_dice(p > 0, l > 0) for p, l in zip(predictions, labels)]))}
    for candidate in candidates:
        scores[candidate["method"]] = float(np.mean([
            _dice(apply_postprocessing(p, candidate, s) > 0, l > 0) for p, l, s in zip(predictions, labels, spacings)
        ]))
    best = max(candidates, key=lambda c: scores[c["method"]])  # ties: the first (keep largest) wins
    chosen = dict(best) if scores[best["method"]] >= scores[NONE] else {"method": NONE}
    return {**chosen, "validation_dice": scores, "n_cases": len(predictions),
            "candidates": [dict(c) for c in candidates]}


class PostprocessMaskd(MapTransform):
    """Dictionary transform for inference configs: post-process a discrete (1, *spatial) mask under ``keys``.

    The spacing is the tensor's ``pixdim`` (MetaTensor), i.e. the grid the mask is on when the transform runs.
    ``method`` "none" (or None) passes the data through, so an inference config can always list this step.
    """

    def __init__(self, keys, method: str | None = None, min_size: float | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        spec = None if method in (None, NONE) else {"method": method, **({"min_size": min_size} if min_size else {})}
        self.spec = check_postprocessing(spec, "PostprocessMaskd")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        out = dict(data)
        if self.spec is None:
            return out
        for key in self.key_iterator(out):
            value = out[key]
            spacing = getattr(value, "pixdim", None)
            spacing = None if spacing is None else [float(s) for s in spacing]
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            processed = np.stack([apply_postprocessing(channel > 0.5, self.spec, spacing) for channel in array])
            result = torch.as_tensor(processed.astype(array.dtype))
            if isinstance(value, torch.Tensor):
                out[key] = value.clone()
                out[key].copy_(result.to(value.device))
            else:
                out[key] = result.numpy()
        return out
