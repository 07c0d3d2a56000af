"""Manifests: loading, validation, nested fractions, the shipped manifests, and the folder builder."""

import json

import nibabel as nib
import numpy as np
import pytest

from medtransfer.cli import main as cli
from medtransfer.data import ManifestError, nested_fractions, open_manifest
from medtransfer.data.manifest_builder import build_manifest
from medtransfer import registry

REAL_MANIFESTS = {
    "msd_hippocampus": ("msd_hippocampus", 3, 260),
    "hc18_fetal_head": ("hc18_fetal_head", 2, 100),
    "isbi2012_em_membranes": ("isbi2012_em_membranes", 2, 30),
}


def _write_case(folder, name, shape=(8, 8, 8), label_values=(0, 1)):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(map(ord, name)) + 1000 * len(name))  # distinct images: no duplicates
    label = rng.choice(label_values, size=shape).astype(np.uint8)
    nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32), np.eye(4)), folder / "images" / name)
    nib.save(nib.Nifti1Image(label, np.eye(4)), folder / "labels" / name)


def test_nested_fractions_are_nested_seeded_and_never_empty():
    ids = [f"case_{i:03d}" for i in range(37)]
    subsets = nested_fractions(ids, seed=3)
    sizes = [len(subsets[k]) for k in ("0.05", "0.1", "0.25", "0.5", "1.0")]
    assert sizes == [2, 4, 10, 19, 37]
    keys = ["0.05", "0.1", "0.25", "0.5", "1.0"]
    for small, large in zip(keys, keys[1:]):
        assert set(subsets[small]) < set(subsets[large])
    assert nested_fractions(ids, seed=3) == subsets
    assert nested_fractions(ids, seed=4)["0.1"] != subsets["0.1"]
    assert nested_fractions(["a"], seed=0)["0.05"] == ["a"]


@pytest.mark.parametrize("name", sorted(REAL_MANIFESTS))
def test_shipped_real_manifests_resolve_to_the_shared_data(name, test_data):
    folder, dimensions, count = REAL_MANIFESTS[name]
    manifest = open_manifest(name, data_root=test_data / folder)
    assert manifest.dimensions == dimensions
    all_ids = [c["id"] for split in ("training", "validation", "test") for c in manifest.content[split]]
    assert len(all_ids) == len(set(all_ids)) == count
    for split in ("training", "validation", "test"):
        assert manifest.datalist(split)  # every referenced file exists and is non-empty
    assert manifest.content["license"] and manifest.content["source"] and manifest.content["citation"]
    assert set(manifest.fractions) == {"0.05", "0.1", "0.25", "0.5", "1.0"}


@pytest.mark.parametrize("name", sorted(REAL_MANIFESTS))
def test_a_folder_of_data_sets_serves_every_manifest_named_after_one_of_them(name, test_data, tmp_path):
    folder = REAL_MANIFESTS[name][0]
    assert open_manifest(name, data_root=test_data).data_root == (test_data / folder).resolve()
    assert open_manifest(name, data_root=test_data / folder).data_root == (test_data / folder).resolve()
    (tmp_path / name).mkdir()  # a same-named but empty subfolder is not taken: the error names the root given
    with pytest.raises(ManifestError, match=str(tmp_path)):
        open_manifest(name, data_root=tmp_path).datalist("training")


def test_hippocampus_manifest_merges_both_labels():
    content = json.loads(registry.manifest_path("msd_hippocampus").read_text())
    assert content["label_map"] == {"1": 1, "2": 1}
    assert content["training"][0]["label"].startswith("labels_multiclass/")


def test_fraction_not_in_manifest_is_an_error(test_data):
    manifest = open_manifest("hc18_fetal_head", data_root=test_data / "hc18_fetal_head")
    with pytest.raises(ManifestError, match=r"fraction 0.3 is not in the manifest; available: 0.05, 0.1"):
        manifest.datalist("training", 0.3)
    assert len(manifest.datalist("training", 0.1)) == 7


def test_wrong_dimensions_for_the_bundle_is_an_error(test_data):
    with pytest.raises(ManifestError, match=r"2D but the bundle trains a 3D network; use the binary_seg_2d bundle"):
        open_manifest("hc18_fetal_head", data_root=test_data / "hc18_fetal_head", dimensions=3)


def test_missing_manifest_file_and_missing_data_file_are_errors(tmp_path, medtransfer_home):
    with pytest.raises(ManifestError, match="manifest not found"):
        open_manifest(tmp_path / "nope.json")
    with pytest.raises(ManifestError, match="no manifest named"):
        open_manifest("no_such_manifest")
    for i in range(6):
        _write_case(tmp_path, f"c{i}.nii.gz")
    content = build_manifest(tmp_path)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(content))
    (tmp_path / content["test"][0]["image"]).unlink()
    manifest = open_manifest(path, data_root=tmp_path)
    with pytest.raises(ManifestError, match=r"file not found: .*images/c\d\.nii\.gz"):
        manifest.datalist("test")
    victim = tmp_path / content["training"][0]["label"]
    victim.write_bytes(b"")
    with pytest.raises(ManifestError, match=r"empty file: .*labels/"):
        manifest.datalist("training")


def test_invalid_manifest_content_is_reported(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        open_manifest(path, data_root=tmp_path)
    content = {"name": "x", "dimensions": 3, "training": [{"id": "a", "image": "a"}], "validation": [],
               "test": [{"id": "a", "image": "b"}], "fractions": {}}
    path.write_text(json.dumps(content))
    with pytest.raises(ManifestError, match="appears in training and test"):
        open_manifest(path, data_root=tmp_path)
    content["test"] = []
    content["fractions"] = {"0.5": ["a"], "1.0": []}
    path.write_text(json.dumps(content))
    with pytest.raises(ManifestError, match="not nested"):
        open_manifest(path, data_root=tmp_path)


def test_no_data_root_is_an_error_that_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv("MEDTRANSFER_DATA", raising=False)
    with pytest.raises(ManifestError, match="no data root given; pass --data_root"):
        open_manifest("hc18_fetal_head")


def test_data_root_from_environment(monkeypatch, test_data):
    monkeypatch.setenv("MEDTRANSFER_DATA", str(test_data / "hc18_fetal_head"))
    assert open_manifest("hc18_fetal_head").data_root == (test_data / "hc18_fetal_head").resolve()


def test_synthetic_manifest_generates_its_data_on_first_use(medtransfer_home):
    manifest = open_manifest("synthetic_2d", dimensions=2)
    assert str(manifest.data_root).startswith(str(medtransfer_home))
    assert len(manifest.datalist("training")) == 30
    assert len(manifest.datalist("training", 0.1)) == 3


def test_cli_builds_a_manifest_for_a_folder_and_checks_it(tmp_path, capsys, medtransfer_home):
    data = tmp_path / "mydata"
    for i in range(10):
        _write_case(data, f"case{i}.nii.gz")
    output = tmp_path / "mine.json"
    assert cli(["data", "manifest", str(data), "--output", str(output), "--seed", "1"]) == 0
    content = json.loads(output.read_text())
    assert content["dimensions"] == 3
    assert [len(content[s]) for s in ("training", "validation", "test")] == [7, 1, 2]
    assert cli(["data", "manifest", str(data), "--output", str(output)]) == 2  # never replaces silently
    assert cli(["data", "check", str(output), "--data-root", str(data)]) == 0
    assert "10 of 10 cases OK" in capsys.readouterr().out


def test_cli_check_reports_a_non_binary_label_by_file(tmp_path, capsys, medtransfer_home):
    data = tmp_path / "mydata"
    for i in range(5):
        _write_case(data, f"case{i}.nii.gz", label_values=(0, 1, 2) if i == 3 else (0, 1))
    output = tmp_path / "mine.json"
    cli(["data", "manifest", str(data), "--output", str(output)])
    assert cli(["data", "check", str(output), "--data-root", str(data)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "case3.nii.gz: label is not binary: values [0, 1, 2]" in out
    assert "4 of 5 cases OK" in out


def test_nnunet_raw_folder(tmp_path, medtransfer_home):
    raw = tmp_path / "Dataset001_Test"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for i in range(6):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), raw / "imagesTr" / f"c{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), raw / "labelsTr" / f"c{i}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "anterior": 1, "posterior": 2},
        "numTraining": 6, "file_ending": ".nii.gz"}))
    content = build_manifest(raw)
    assert content["label_map"] == {"1": 1, "2": 1}
    assert content["training"][0]["image"].startswith("imagesTr/") and content["training"][0]["image"].endswith("_0000.nii.gz")
