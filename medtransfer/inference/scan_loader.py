"""LoadImaged for scans: NIfTI / PNG by MONAI's readers, DICOM series folders by the checking series reader.

Registered last, the DICOM series reader is asked first and claims folders only, so its errors (mixed series,
missing slices) reach the user instead of being hidden by a fallback reader. An exported bundle ships this file
as ``scripts/scan_loader.py`` (see ``medtransfer.inference.standalone``).
"""

from __future__ import annotations

from monai.transforms import LoadImaged

from medtransfer.data.readers import DicomSeriesReader


class LoadScand(LoadImaged):
    """``LoadImaged(keys, image_only=True)`` plus the DICOM series reader."""

    def __init__(self, keys, image_only: bool = True, **kwargs) -> None:
        super().__init__(keys=keys, image_only=image_only, **kwargs)
        self.register(DicomSeriesReader())
