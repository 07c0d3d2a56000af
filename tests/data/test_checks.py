"""Bad cases fail when first loaded, with an error that names the file and the problem."""

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medtransfer.data import eval_transforms, train_transforms
from tests.conftest import error_text


def _nifti(path, array, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return str(path)


def _load(item, dimensions=3, label_map=None):
    return eval_transforms(dimensions, label_map=label_map)(item)


def _message(excinfo) -> str:
    return error_text(excinfo.value)


def test_good_case_loads_normalised(tmp_path):
    image = np.random.default_rng(0).random((10, 12, 8)).astype(np.float32) * 1e6  # MSD-like intensity scale
    label = np.zeros((10, 12, 8), np.uint8)
    label[3:6, 3:6, 3:6] = 1
    out = _load({"image": _nifti(tmp_path / "i.nii.gz", image), "label": _nifti(tmp_path / "l.nii.gz", label)})
    assert out["image"].shape == (1, 10, 12, 8)
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    assert set(np.unique(out["label"].numpy())) == {0.0, 1.0}


def test_shape_mismatch(tmp_path):
    item = {
        "image": _nifti(tmp_path / "img.nii.gz", np.zeros((10, 12, 8), np.float32)),
        "label": _nifti(tmp_path / "lab.nii.gz", np.zeros((10, 12, 9), np.uint8)),
    }
    with pytest.raises(Exception) as excinfo:
        _load(item)
    message = _message(excinfo)
    assert "image/label shape mismatch" in message and "img.nii.gz" in message and "lab.nii.gz" in message


def test_affine_mismatch(tmp_path):
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    item = {
        "image": _nifti(tmp_path / "img.nii.gz", np.zeros((8, 8, 8), np.float32)),
        "label": _nifti(tmp_path / "lab.nii.gz", np.zeros((8, 8, 8), np.uint8), shifted),
    }
    with pytest.raises(Exception) as excinfo:
        _load(item)
    assert "geometry mismatch (affine)" in _message(excinfo)


def test_non_binary_label_suggests_label_map_and_label_map_fixes_it(tmp_path):
    label = np.zeros((8, 8, 8), np.uint8)
    label[1:3] = 1
    label[4:6] = 2
    item = {
        "image": _nifti(tmp_path / "img.nii.gz", np.ones((8, 8, 8), np.float32)),
        "label": _nifti(tmp_path / "multi.nii.gz", label),
    }
    with pytest.raises(Exception) as excinfo:
        _load(dict(item))
    message = _message(excinfo)
    assert "multi.nii.gz: label is not binary: values [0, 1, 2]" in message and "label_map" in message
    out = _load(dict(item), label_map={1: 1, 2: 1})
    assert float(out["label"].sum()) == float((label > 0).sum())
    out = _load(dict(item), label_map={"1": 1, "2": 0})  # e.g. the anterior hippocampus only
    assert float(out["label"].sum()) == float((label == 1).sum())


def test_2d_file_to_3d_network_and_back(tmp_path):
    two_d = {"image": _nifti(tmp_path / "flat.nii.gz", np.zeros((16, 16), np.float32))}
    with pytest.raises(Exception) as excinfo:
        eval_transforms(3, with_label=False)(two_d)
    assert "flat.nii.gz: a 2D image (shape (16, 16)) given to a 3D network; use the binary_seg_2d bundle" in _message(
        excinfo
    )
    three_d = {"image": _nifti(tmp_path / "vol.nii.gz", np.zeros((8, 8, 8), np.float32))}
    with pytest.raises(Exception) as excinfo:
        eval_transforms(2, with_label=False)(three_d)
    assert "vol.nii.gz: a 3D image" in _message(excinfo)


def test_rgb_png_is_refused(tmp_path):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(Exception) as excinfo:
        eval_transforms(2, with_label=False)({"image": str(tmp_path / "rgb.png")})
    assert "rgb.png" in _message(excinfo) and "single-channel" in _message(excinfo)


def test_unreadable_file_names_the_file(tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"this is not an image")
    with pytest.raises(Exception) as excinfo:
        eval_transforms(3, with_label=False)({"image": str(broken)})
    assert "broken.nii.gz" in _message(excinfo)


def test_train_chain_crops_patches_with_foreground(tmp_path):
    label = np.zeros((20, 24, 16), np.uint8)
    label[8:12, 8:12, 6:10] = 1
    item = {
        "image": _nifti(tmp_path / "i.nii.gz", np.random.default_rng(1).random((20, 24, 16)).astype(np.float32)),
        "label": _nifti(tmp_path / "l.nii.gz", label),
    }
    chain = train_transforms(3, patch_size=(16, 16, 16), num_samples=4)
    chain.set_random_state(0)
    patches = chain(item)
    assert len(patches) == 4
    assert all(p["image"].shape == (1, 16, 16, 16) for p in patches)
    assert any(float(p["label"].sum()) > 0 for p in patches)
    with pytest.raises(ValueError, match="does not have 3 dimensions"):
        train_transforms(3, patch_size=(16, 16))
