"""DICOM series folders load through the same transform chain as NIfTI and give identical tensors."""

import numpy as np
import pytest

from medtransfer.data import eval_transforms
from tests.conftest import error_text

PAIRS = [
    ("dicom_ct_totalseg_example/dicom/ct", "dicom_ct_totalseg_example/images/example_ct.nii.gz"),
    ("dicom_ct_liver_seg/dicom/ct", "dicom_ct_liver_seg/images/ct_3slice.nii.gz"),
    ("dicom_mr_brain_tumor_progression/dicom/PGBM-003_T1post",
     "dicom_mr_brain_tumor_progression/images/PGBM-003_T1post.nii.gz"),
]


@pytest.mark.parametrize("dicom, nifti", PAIRS)
def test_dicom_series_folder_equals_its_nifti_copy_after_loading(dicom, nifti, test_data):
    load = eval_transforms(3, with_label=False)
    from_dicom = load({"image": str(test_data / dicom)})["image"]
    from_nifti = load({"image": str(test_data / nifti)})["image"]
    assert from_dicom.shape == from_nifti.shape
    assert np.allclose(from_dicom.affine, from_nifti.affine, atol=1e-4)
    assert float((from_dicom - from_nifti).abs().max()) == 0.0


def test_folder_with_two_series_is_refused_with_the_choices(test_data, tmp_path):
    import shutil

    folder = tmp_path / "mixed"
    for series in ("PGBM-003_T1post", "PGBM-003_FLAIRreg"):
        shutil.copytree(test_data / "dicom_mr_brain_tumor_progression" / "dicom" / series, folder / series)
    with pytest.raises(Exception) as excinfo:
        eval_transforms(3, with_label=False)({"image": str(folder)})
    text = error_text(excinfo.value)
    assert "SeveralSeriesError" in text and "mixed: holds 2 image series; choose one" in text  # a DicomInputError
    assert "description='T1post'" in text and "description='FLAIR_reg'" in text
