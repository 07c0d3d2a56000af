"""Post-processing for inference: mask back in the input's own geometry, then written to disk."""

from __future__ import annotations

import numpy as np
from monai.transforms import AsDiscreted, Compose, Invertd, SaveImaged


def inference_postprocessing(preprocessing: Compose, output_dir: str, output_ext: str = ".nii.gz") -> Compose:
    """argmax → undo orientation/resampling of `preprocessing` (nearest) → save as uint8 `<name>_seg<ext>`."""
    return Compose(
        [
            AsDiscreted(keys="pred", argmax=True),
            Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=True, to_tensor=True),
            SaveImaged(
                keys="pred",
                output_dir=output_dir,
                output_postfix="seg",
                output_ext=output_ext,
                output_dtype=np.uint8,
                separate_folder=False,
                resample=False,
                print_log=False,
            ),
        ]
    )
