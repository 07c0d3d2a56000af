"""Colour and multi-channel inputs: manifests record `channels`, transforms keep them, a wrong count is an error."""

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medtransfer.data import eval_transforms, open_manifest
from medtransfer.data.manifest_builder import build_manifest
from tests.conftest import error_text


def _rgb_folder(folder, count=6):
    rng = np.random.default_rng(0)
    for i in range(count):
        rgb = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
        rgb[..., 2] //= 4  # channels of other ranges: each is normalised on its own
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(folder / "images" / f"x{i}.png")
        Image.fromarray((rgb[..., 0] > 128).astype(np.uint8)).save(folder / "labels" / f"x{i}.png")
    return folder


def test_rgb_images_load_with_three_channels_each_normalised(tmp_path, medtransfer_home):
    folder = _rgb_folder(tmp_path / "rgb")
    content = build_manifest(folder, test_fraction=0.34, validation_fraction=0.17)
    assert content["channels"] == 3
    path = tmp_path / "rgb.json"
    path.write_text(json.dumps(content))
    manifest = open_manifest(path, data_root=folder)
    item = eval_transforms(2, channels=manifest.channels)(manifest.datalist("training")[0])
    assert tuple(item["image"].shape) == (3, 48, 40) and tuple(item["label"].shape) == (1, 48, 40)
    for channel in item["image"]:
        assert float(channel.min()) == 0.0 and float(channel.max()) == 1.0


def test_wrong_channel_count_names_the_file_and_both_counts(tmp_path, medtransfer_home):
    folder = _rgb_folder(tmp_path / "rgb", count=1)
    with pytest.raises(RuntimeError) as excinfo:  # MONAI wraps the CaseError raised inside Compose
        eval_transforms(2)({"image": str(folder / "images" / "x0.png"), "label": str(folder / "labels" / "x0.png")})
    message = error_text(excinfo.value)
    assert "CaseError" in message and "x0.png" in message and "expected a single-channel (grey) image, got 3 channel(s)" in message
    grey = tmp_path / "grey.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(grey)
    with pytest.raises(RuntimeError) as excinfo:
        eval_transforms(2, with_label=False, channels=3)({"image": str(grey)})
    assert "grey.png: expected 3 channels, got 1 channel(s)" in error_text(excinfo.value)


def test_nnunet_channel_names_give_a_multi_channel_manifest(tmp_path, medtransfer_home):
    raw = tmp_path / "Dataset001_Two"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):
        for channel in range(2):
            volume = rng.random((10, 12, 8)).astype(np.float32) * (1 + 100 * channel)
            nib.save(nib.Nifti1Image(volume, np.eye(4)), raw / "imagesTr" / f"c{i}_{channel:04d}.nii.gz")
        nib.save(nib.Nifti1Image((rng.random((10, 12, 8)) > 0.5).astype(np.uint8), np.eye(4)),
                 raw / "labelsTr" / f"c{i}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "FLAIR"},
                                                  "labels": {"background": 0, "lesion": 1}, "file_ending": ".nii.gz"}))
    content = build_manifest(raw, test_fraction=0.2, validation_fraction=0.2)
    assert content["channels"] == 2
    assert content["training"][0]["image"] == [f"imagesTr/{content['training'][0]['id']}_0000.nii.gz",
                                               f"imagesTr/{content['training'][0]['id']}_0001.nii.gz"]
    path = tmp_path / "two.json"
    path.write_text(json.dumps(content))
    manifest = open_manifest(path, data_root=raw)
    item = eval_transforms(3, channels=2)(manifest.datalist("training")[0])
    assert tuple(item["image"].shape) == (2, 10, 12, 8)
