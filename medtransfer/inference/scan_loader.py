"""LoadImaged for scans: NIfTI / PNG by MONAI's readers, DICOM series folders by the checking series reader.

Registered last, the DICOM series reader is asked first and claims folders only, so its errors (mixed series,
missing slices) reach the user instead of being hidden by a fallback reader. An exported bundle ships this file
as ``scripts/scan_loader.py`` (see ``medtransfer.inference.standalone``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.data import MetaTensor
from monai.transforms import LoadImaged, MapTransform
from monai.utils import MetaKeys

from medtransfer.data.readers import DicomSeriesReader


class LoadScand(LoadImaged):
    """``LoadImaged(keys, image_only=True)`` plus the DICOM series reader."""

    def __init__(self, keys, image_only: bool = True, **kwargs) -> None:
        super().__init__(keys=keys, image_only=image_only, **kwargs)
        self.register(DicomSeriesReader())


class SingleChannelMaskd(MapTransform):
    """Mark a one-channel mask as a grey image before MONAI writes it (``SaveImaged``).

    A mask predicted from a colour or multi-channel scan inherits the scan's ``original_channel_dim`` (-1 for an RGB
    PNG). MONAI 1.6's writers then take the squeezed 2D mask for a channel-first 1D array and fail to save it; a
    grey scan says ``no_channel``, which is also true of the mask file written, so the mask is given that."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        result = dict(data)
        for key in self.key_iterator(result):
            mask = result[key]
            if isinstance(mask, MetaTensor):
                if mask.shape[0] != 1:
                    raise ValueError(f"{key}: expected a one-channel mask, got {mask.shape[0]} channels")
                mask.meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = "no_channel"
        return result
