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
    Randomizable,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    Resize,
    SpatialPadd,
)

from medtransfer.pretraining.corruptions import RandCorruptiond

DEFAULT_SIZE_BINS = (0.0, 0.05)  # foreground fraction thresholds of the derived classes
# ConRec's view strength (its `data/transform.py`, SimCLR augmentation with colour_jitter_strength s = 1):
CROP_AREA = (0.08, 1.0)            # random resized crop: share of the image area (volume in 3D) kept
CROP_ASPECT = (3 / 4, 4 / 3)       # aspect ratio range of the crop (2D; in 3D each axis pair)
INTENSITY_STRENGTH = 0.8           # contrast (about the mean) and multiplicative brightness ±0.8·s


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


class RandResizedCropd(Randomizable, MapTransform):
    """SimCLR/ConRec random resized crop: a crop of a random share of the area and aspect, resized to `size`.

    The share of the image area (volume in 3D) is drawn uniformly from `area`, the log aspect ratio of each
    axis against the first uniformly from `aspect`; the crop is clipped to the image and placed uniformly,
    then resized (bilinear / trilinear) to `size`. The images must be at least `size` (pad first).
    """

    def __init__(self, keys, size: Sequence[int], area: Sequence[float] = CROP_AREA,
                 aspect: Sequence[float] = CROP_ASPECT) -> None:
        MapTransform.__init__(self, keys)
        self.size, self.area, self.aspect = [int(s) for s in size], tuple(area), tuple(aspect)
        self.resize = Resize(spatial_size=self.size, mode="bilinear" if len(self.size) == 2 else "trilinear")

    def _box(self, shape: Sequence[int]) -> list[slice]:
        dims = len(shape)
        share = self.R.uniform(*self.area)
        ratios = [1.0] + [float(np.exp(self.R.uniform(*np.log(self.aspect)))) for _ in range(dims - 1)]
        scale = (share / float(np.prod(ratios))) ** (1 / dims)  # side of the crop relative to the image
        sides = [max(1, min(int(round(n * scale * r)), n)) for n, r in zip(shape, ratios)]
        starts = [int(self.R.randint(0, n - side + 1)) for n, side in zip(shape, sides)]
        return [slice(start, start + side) for start, side in zip(starts, sides)]

    def __call__(self, data):
        item = dict(data)
        for key in self.key_iterator(item):
            image = item[key]
            box = self._box(image.shape[1:])
            item[key] = self.resize(image[(slice(None), *box)])
        return item


def two_views(patch_size: Sequence[int], crop_area: Sequence[float] = CROP_AREA,
              crop_aspect: Sequence[float] = CROP_ASPECT, intensity_strength: float = INTENSITY_STRENGTH) -> list:
    """Two views of one image with ConRec's augmentation strength, each then corrupted.

    Per view (ConRec, grey images): a random resized crop (area share 0.08–1, aspect 3/4–4/3) resized to the
    patch, a flip per axis (p = 0.5), contrast about the mean and multiplicative brightness, each ×(1 ± 0.8)
    with p = 0.8, clamped to [0, 1] for the sigmoid reconstruction head. Then one random corruption of each
    clean view is its network input. Keys produced: view_1/view_2 (clean targets), input_1/input_2 (inputs).
    """
    steps: list = [SpatialPadd(keys="image", spatial_size=list(patch_size)),
                   CopyItemsd(keys="image", times=2, names=["view_1", "view_2"])]
    for view in ("view_1", "view_2"):
        steps += [
            RandResizedCropd(keys=view, size=patch_size, area=crop_area, aspect=crop_aspect),
            *[RandFlipd(keys=view, prob=0.5, spatial_axis=axis) for axis in range(len(patch_size))],
            RandScaleIntensityFixedMeand(keys=view, factors=intensity_strength, prob=0.8),  # contrast
            RandScaleIntensityd(keys=view, factors=intensity_strength, prob=0.8),  # brightness
            ClampIntensityd(keys=view),
        ]
    for index in ("1", "2"):
        steps += [CopyItemsd(keys=f"view_{index}", names=[f"input_{index}"]), RandCorruptiond(keys=[f"input_{index}"])]
    return steps + [DeleteItemsd(keys="image")]  # whole images differ in size and would not batch
