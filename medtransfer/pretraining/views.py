"""Data transforms of pretraining: class labels derived from masks, corrupted inputs, two-view pairs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import (
    CopyItemsd,
    DeleteItemsd,
    MapTransform,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    SpatialPadd,
)

from medtransfer.pretraining.corruptions import RandCorruptiond

DEFAULT_SIZE_BINS = (0.0, 0.05)  # foreground fraction thresholds of the derived classes


class PatchClassd(MapTransform):
    """Class label of a patch for classification pretraining.

    With a manifest `class` field, that value (an integer per case). Otherwise derived from the mask:
    0 = no foreground in the patch, 1 = foreground covering at most 5 % of it, 2 = more. The result replaces
    "label" so that MONAI's trainer feeds it to the cross-entropy loss.
    """

    def __init__(self, size_bins: Sequence[float] = DEFAULT_SIZE_BINS) -> None:
        super().__init__(keys=["label"], allow_missing_keys=True)
        self.size_bins = tuple(size_bins)

    def __call__(self, data):
        item = dict(data)
        if "class" in item:
            item["label"] = torch.as_tensor(int(item.pop("class")), dtype=torch.long)
            return item
        fraction = float(torch.as_tensor(item["label"]).float().mean())
        item["label"] = torch.as_tensor(int(np.searchsorted(self.size_bins, fraction, side="left")), dtype=torch.long)
        return item


class ClampIntensityd(MapTransform):
    """Keep intensities in [0, 1] after jitter: the reconstruction head ends in a sigmoid."""

    def __call__(self, data):
        item = dict(data)
        for key in self.key_iterator(item):
            item[key] = item[key].clamp(0.0, 1.0) if isinstance(item[key], torch.Tensor) else np.clip(item[key], 0, 1)
        return item


def corrupted_input(keys=("image",)) -> list:
    """Target = the clean image ("label"); input = one random corruption of it ("image")."""
    return [CopyItemsd(keys=list(keys), names=["label"]), RandCorruptiond(keys=list(keys))]


def two_views(patch_size: Sequence[int]) -> list:
    """Two independently cropped, flipped and intensity-jittered views of one image, each then corrupted.

    Keys produced: view_1/view_2 (clean targets), input_1/input_2 (corrupted network inputs).
    """
    steps: list = [SpatialPadd(keys="image", spatial_size=list(patch_size)),
                   CopyItemsd(keys="image", times=2, names=["view_1", "view_2"])]
    for view in ("view_1", "view_2"):
        steps += [
            RandSpatialCropd(keys=view, roi_size=list(patch_size), random_size=False),
            *[RandFlipd(keys=view, prob=0.5, spatial_axis=axis) for axis in range(len(patch_size))],
            RandScaleIntensityd(keys=view, factors=0.2, prob=0.8),
            RandShiftIntensityd(keys=view, offsets=0.1, prob=0.8),
            ClampIntensityd(keys=view),
        ]
    for index in ("1", "2"):
        steps += [CopyItemsd(keys=f"view_{index}", names=[f"input_{index}"]), RandCorruptiond(keys=[f"input_{index}"])]
    return steps + [DeleteItemsd(keys="image")]  # whole images differ in size and would not batch
