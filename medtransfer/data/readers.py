"""A MONAI image reader for DICOM series folders that checks the series before reading it.

MONAI's own DICOM readers accept a folder but silently pick one of several series and do not notice missing
or duplicated slices. This reader goes through `medtransfer.data.dicom` (series grouping, geometry checks,
SimpleITK decoding) and hands MONAI the same array layout and RAS affine that NibabelReader gives for a NIfTI
copy of the series, so every later transform (and `Invertd`) treats both alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from medtransfer.data.dicom import read_series


class DicomSeriesReader(ImageReader):
    """Reads a folder holding one DICOM series (or the series named by `series_uid`)."""

    def __init__(self, series_uid: str | None = None, allow_uneven: bool = False) -> None:
        super().__init__()
        self.series_uid = series_uid
        self.allow_uneven = allow_uneven

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        return all(Path(name).is_dir() for name in ensure_tuple(filename))

    def read(self, data: Sequence[str] | str, **kwargs):
        volumes = [
            (*read_series(path, series_uid=self.series_uid, allow_uneven=self.allow_uneven), str(path))
            for path in ensure_tuple(data)
        ]
        return volumes if len(volumes) > 1 else volumes[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        volumes = img if isinstance(img, list) else [img]
        if len(volumes) != 1:
            raise ValueError("DicomSeriesReader reads one series per item")
        array, meta, path = volumes[0]
        header = {
            MetaKeys.AFFINE: np.asarray(meta["affine"]),
            MetaKeys.ORIGINAL_AFFINE: np.asarray(meta["affine"]),
            MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape),
            MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel",
            MetaKeys.SPACE: SpaceKeys.RAS,
            "filename_or_obj": path,
            "series_instance_uid": meta["series"].uid,
            "dicom_warnings": list(meta["warnings"]),
        }
        return array, header
