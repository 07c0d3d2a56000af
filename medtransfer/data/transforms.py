"""MONAI transform chains for 2D and 3D binary segmentation.

Deterministic steps (load, check, relabel, reorient, resample, normalise) come first so a CacheDataset keeps
their result and later epochs never decode files again; random steps (crops, flips, intensity jitter) follow.
Intensities are normalised per image by percentiles to [0, 1]: MSD Hippocampus volumes range over four orders
of magnitude, and self-supervised corruptions expect [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapLabelValued,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRangePercentilesd,
    Spacingd,
    SpatialPadd,
)

from medtransfer.data.checks import ValidateCased
from medtransfer.data.readers import DicomSeriesReader

NUM_CLASSES = 2  # background + foreground; networks output two channels (softmax)


def _keys(with_label: bool) -> list[str]:
    return ["image", "label"] if with_label else ["image"]


def _loader(keys: list[str]) -> LoadImaged:
    """MONAI's readers pick NIfTI/PNG by suffix; registered last, the DICOM series reader is asked first and
    claims folders only, so its errors (mixed series, missing slices) reach the user unwrapped by fallbacks."""
    loader = LoadImaged(keys=keys, image_only=True)
    loader.register(DicomSeriesReader())
    return loader


def load_transforms(
    dimensions: int,
    label_map: Mapping | None = None,
    target_spacing: Sequence[float] | None = None,
    with_label: bool = True,
    channels: int = 1,
) -> list:
    """Load → channel first → check → relabel → orient (3D) → resample → normalise. Deterministic.

    `channels` is the manifest's number of input channels (grey 1, RGB 3, MRI sequences); every channel is
    normalised on its own (percentiles per channel, as nnU-Net normalises each modality)."""
    keys = _keys(with_label)
    label_map = {int(k): int(v) for k, v in label_map.items()} if label_map else None
    chain = [
        _loader(keys),
        EnsureChannelFirstd(keys=keys),
        ValidateCased(keys=keys, dimensions=dimensions, label_map=label_map, channels=channels),
    ]
    if with_label and label_map:
        chain.append(MapLabelValued(keys="label", orig_labels=list(label_map), target_labels=list(label_map.values())))
    if dimensions == 3:
        chain.append(Orientationd(keys=keys, axcodes="RAS"))
    if target_spacing:
        modes = ("bilinear", "nearest") if with_label else ("bilinear",)
        chain.append(Spacingd(keys=keys, pixdim=list(target_spacing), mode=modes))
    chain += [
        ScaleIntensityRangePercentilesd(keys="image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True,
                                        channel_wise=True),
        EnsureTyped(keys="image", dtype=torch.float32),
    ]
    if with_label:
        chain.append(EnsureTyped(keys="label", dtype=torch.float32))
    return chain


def augmentation_transforms(patch_size: Sequence[int], num_samples: int = 2) -> list:
    """Random patch sampling (half centred on foreground) and light flips / intensity jitter."""
    keys = ["image", "label"]
    flips = [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(len(patch_size))]
    return [
        SpatialPadd(keys=keys, spatial_size=list(patch_size)),
        RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=list(patch_size),
            pos=1,
            neg=1,
            num_samples=num_samples,
            image_key="image",
        ),
        *flips,
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
        RandGaussianNoised(keys="image", prob=0.2, std=0.02),
    ]


def train_transforms(
    dimensions: int,
    patch_size: Sequence[int],
    label_map: Mapping | None = None,
    target_spacing: Sequence[float] | None = None,
    num_samples: int = 2,
    channels: int = 1,
) -> Compose:
    if len(patch_size) != dimensions:
        raise ValueError(f"patch_size {list(patch_size)} does not have {dimensions} dimensions")
    return Compose(
        load_transforms(dimensions, label_map, target_spacing, channels=channels)
        + augmentation_transforms(patch_size, num_samples)
    )


def eval_transforms(
    dimensions: int,
    label_map: Mapping | None = None,
    target_spacing: Sequence[float] | None = None,
    with_label: bool = True,
    channels: int = 1,
) -> Compose:
    return Compose(load_transforms(dimensions, label_map, target_spacing, with_label, channels))


def postprocessing(with_label: bool = True) -> Compose:
    """Logits → one-hot prediction (and one-hot label) for MONAI's metrics."""
    chain = [AsDiscreted(keys="pred", argmax=True, to_onehot=NUM_CLASSES)]
    if with_label:
        chain.append(AsDiscreted(keys="label", to_onehot=NUM_CLASSES))
    return Compose(chain)
