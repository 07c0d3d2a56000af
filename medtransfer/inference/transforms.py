"""Post-processing for inference: mask back in the input's own geometry, then written to disk."""

from __future__ import annotations

import numpy as np
from monai.transforms import AsDiscreted, Compose, Invertd, SaveImaged


def inference_postprocessing(
    preprocessing: Compose, output_dir: str, output_ext: str = ".nii.gz", postprocess: dict | None = None
) -> Compose:
    """argmax → undo orientation/resampling of `preprocessing` (nearest) → the learned connected-component
    post-processing (`postprocess`, e.g. {"method": "keep_largest_component"}; None: none) → save as uint8
    `<name>_seg<ext>`."""
    from medtransfer.inference.postprocess import PostprocessMaskd

    return Compose(
        [
            AsDiscreted(keys="pred", argmax=True),
            Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=True, to_tensor=True),
            PostprocessMaskd(keys="pred", **(postprocess or {})),
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
