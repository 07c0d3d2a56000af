"""2D slice data sets derived from 3D manifests: splits and fractions stay per volume, voxels and geometry kept."""

import json

import nibabel as nib
import numpy as np
import pytest

from medtransfer.data import open_manifest
from medtransfer.data.manifest import ManifestError, read_manifest_file
from medtransfer.data.slices import slice_manifest
from tests.conftest import error_text


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """A small 3D phantom data set (10 volumes of 32 × 32 × 24) with its manifest."""
    from medtransfer.atomic import save_json
    from medtransfer.data.manifest_builder import build_manifest
    from medtransfer.data.synthetic import ensure_synthetic_dataset

    root = ensure_synthetic_dataset(3, 10, (32, 32, 24), seed=3, root=tmp_path_factory.mktemp("phantoms3d") / "data")
    save_json(root / "volumes.json", build_manifest(root, name="volumes", fractions=(0.25, 0.5, 1.0)))
    return open_manifest(root / "volumes.json", data_root=root)


def test_slices_keep_volumes_together_and_copy_voxels(volumes, tmp_path):
    path = slice_manifest(volumes, tmp_path / "out", axis=2)
    content = read_manifest_file(path)  # validates splits and nested fractions
    assert content["dimensions"] == 2 and content["derived_from"]["axis"] == 2
    for split in ("training", "validation", "test"):
        assert {case["volume"] for case in content[split]} <= set(volumes.case_ids(split))
    by_id = {case["id"]: case for split in ("training", "validation", "test") for case in content[split]}
    for key, volume_ids in volumes.content["fractions"].items():
        assert {by_id[s]["volume"] for s in content["fractions"][key]} == set(volume_ids)
        expected = [case["id"] for case in content["training"] if case["volume"] in set(volume_ids)]
        assert sorted(content["fractions"][key]) == sorted(expected)  # all slices of those volumes

    item = volumes.datalist("test")[0]
    image3d = nib.as_closest_canonical(nib.load(item["image"]))
    label3d = np.asanyarray(nib.as_closest_canonical(nib.load(item["label"])).dataobj)
    kept = [case for case in content["test"] if case["volume"] == item["id"]]
    assert len(kept) == label3d.shape[2]  # test: every slice, for the volume's Dice
    assert [case["slice"] for case in kept] == list(range(label3d.shape[2]))
    training_item = volumes.datalist("training")[0]
    training_label = np.asanyarray(nib.as_closest_canonical(nib.load(training_item["label"])).dataobj)
    training_kept = [case for case in content["training"] if case["volume"] == training_item["id"]]
    assert len(training_kept) == int((training_label > 0).any(axis=(0, 1)).sum())  # only slices with foreground
    index = next(c["slice"] for c in kept if (label3d[:, :, c["slice"]] > 0).any())
    kept = [c for c in kept if c["slice"] == index]
    image2d = nib.load(tmp_path / "out" / kept[0]["image"])
    assert image2d.shape == image3d.shape[:2]
    np.testing.assert_array_equal(np.asanyarray(image2d.dataobj), np.asanyarray(image3d.dataobj)[:, :, index])
    world = image3d.affine @ np.array([3, 4, index, 1])
    np.testing.assert_allclose(image2d.affine @ np.array([3, 4, 0, 1]), world)  # same place in the scanner

    assert slice_manifest(volumes, tmp_path / "out", axis=2) == path  # reused, not rewritten
    with pytest.raises(ManifestError) as error:
        slice_manifest(volumes, tmp_path / "out", axis=2, keep_empty=True, name=content["name"])
    assert "derived differently" in error_text(error.value)


def test_keep_empty_and_other_axes(volumes, tmp_path):
    path = slice_manifest(volumes, tmp_path / "all", axis=0, keep_empty=True)
    content = json.loads(path.read_text())
    n_volumes = sum(len(volumes.case_ids(s)) for s in ("training", "validation", "test"))
    assert sum(len(content[s]) for s in ("training", "validation", "test")) == 32 * n_volumes
    assert content["name"].endswith("_2d_sagittal")


def test_sliced_manifest_trains_in_the_2d_pipeline(volumes, tmp_path):
    from medtransfer.data.transforms import eval_transforms

    path = slice_manifest(volumes, tmp_path / "out")
    manifest = open_manifest(path, data_root=tmp_path / "out", dimensions=2)
    sample = eval_transforms(2)(manifest.datalist("training", 0.25)[0])
    assert tuple(sample["image"].shape) == (1, 32, 32) and set(np.unique(sample["label"].numpy())) <= {0.0, 1.0}


def test_bad_input(volumes, tmp_path):
    flat = type("Flat", (), {"dimensions": 2, "name": "flat"})()
    with pytest.raises(ManifestError, match="needs a 3D manifest"):
        slice_manifest(flat, tmp_path)
    with pytest.raises(ManifestError, match="axis must be"):
        slice_manifest(volumes, tmp_path, axis=3)


def test_cli_writes_the_slices_and_names_the_data_root(volumes, tmp_path, capsys):
    from medtransfer.cli import main

    out = tmp_path / "cli"
    assert main(["data", "slices", str(volumes.path), "--data-root", str(volumes.data_root), "--out", str(out),
                 "--axis", "1", "--name", "volumes_coronal"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'volumes_coronal.json'}" in printed and f"--data-root {out.resolve()}" in printed
    content = read_manifest_file(out / "volumes_coronal.json")
    assert content["derived_from"]["axis"] == 1 and all((out / c["image"]).is_file() for c in content["test"])
