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
    RandAdjustContrastd,
    RandAffined,
    RandGaussianSmoothd,
    RandScaleIntensityFixedMeand,
    RandSimulateLowResolutiond,
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


AUGMENTATIONS = ("light", "nnunet")


def augmentation_transforms(patch_size: Sequence[int], num_samples: int = 2, strength: str = "light") -> list:
    """Random patch sampling (half centred on foreground), then the augmentation chain `strength` names.

    `light`: flips and small intensity jitter (the chain every run used before plans existed).
    `nnunet`: nnU-Net v2's default training augmentation (`nnUNetTrainer.get_training_transforms`), in MONAI
    transforms, in nnU-Net's order, with its probabilities and ranges:
      - rotation and scaling, one affine resampling (p 0.36 = nnU-Net's independent p 0.2 for each):
        rotation +-180 deg in 2D, +-30 deg per axis in 3D; scale 0.7-1.4 per axis (nnU-Net: isotropic);
        image bilinear, label nearest, zero padding. The crop is 1.4x the patch (nnU-Net also samples a larger
        region first), so rotated corners stay filled where the image allows; the affine returns the patch;
      - Gaussian noise p 0.1, sd drawn from [0, 0.06] (nnU-Net's variance 0-0.1 on z-scored images, i.e. sd up
        to 0.32 image sd, on our [0, 1]-scaled images whose sd is about 0.2);
      - Gaussian blur p 0.2, sigma 0.5-1.0 voxels;
      - brightness (multiplicative) p 0.15, x 0.75-1.25;
      - contrast p 0.15, x 0.75-1.25 about the mean, range preserved;
      - simulated low resolution p 0.25, zoom 0.5-1.0 (nearest down, trilinear/bilinear up);
      - gamma on the inverted image p 0.1, then gamma p 0.3, gamma 0.7-1.5, statistics retained;
      - mirroring p 0.5 on every axis.
    Elastic deformation is off, as in nnU-Net v2's default trainer.
    """
    if strength not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {strength!r}")
    keys = ["image", "label"]
    dims = len(patch_size)
    flips = [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(dims)]
    if strength == "light":
        return [
            SpatialPadd(keys=keys, spatial_size=list(patch_size)),
            RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=list(patch_size), pos=1, neg=1,
                                   num_samples=num_samples, image_key="image"),
            *flips,
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            RandGaussianNoised(keys="image", prob=0.2, std=0.02),
        ]
    import math

    region = [int(math.ceil(p * 1.4)) for p in patch_size]
    rotation = math.pi if dims == 2 else math.pi / 6
    sigma = (0.5, 1.0)
    return [
        SpatialPadd(keys=keys, spatial_size=list(patch_size)),
        RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=region, pos=1, neg=1,
                               num_samples=num_samples, image_key="image", allow_smaller=True),
        RandAffined(keys=keys, prob=0.36, spatial_size=list(patch_size),
                    rotate_range=[rotation] if dims == 2 else [rotation] * 3,
                    scale_range=[(-0.3, 0.4)] * dims, mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandGaussianNoised(keys="image", prob=0.1, std=0.06, sample_std=True),
        RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=sigma, sigma_y=sigma, sigma_z=sigma),
        RandScaleIntensityd(keys="image", factors=0.25, prob=0.15),
        RandScaleIntensityFixedMeand(keys="image", factors=0.25, prob=0.15, preserve_range=True),
        RandSimulateLowResolutiond(keys="image", prob=0.25, zoom_range=(0.5, 1.0),
                                   upsample_mode="bilinear" if dims == 2 else "trilinear"),
        RandAdjustContrastd(keys="image", prob=0.1, gamma=(0.7, 1.5), invert_image=True, retain_stats=True),
        RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.7, 1.5), retain_stats=True),
        *flips,
    ]


def train_transforms(
    dimensions: int,
    patch_size: Sequence[int],
    label_map: Mapping | None = None,
    target_spacing: Sequence[float] | None = None,
    num_samples: int = 2,
    channels: int = 1,
    augmentation: str = "light",
) -> Compose:
    if len(patch_size) != dimensions:
        raise ValueError(f"patch_size {list(patch_size)} does not have {dimensions} dimensions")
    return Compose(
        load_transforms(dimensions, label_map, target_spacing, channels=channels)
        + augmentation_transforms(patch_size, num_samples, augmentation)
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
