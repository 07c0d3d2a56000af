"""Exact and near-duplicate images: the perceptual rule, groups, group-aware splits, `data check` leakage."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medtransfer.cli import main as cli
from medtransfer.data import open_manifest
from medtransfer.data import duplicates
from medtransfer.data.duplicates import (
    connected_groups,
    cross_split_groups,
    duplicate_pairs,
    find_duplicates,
    fingerprints,
)
from medtransfer.data.manifest_builder import build_manifest, split_ids


def _texture(seed, shape=(90, 120)):
    """A smooth random image (ultrasound-like blobs), uint8."""
    from scipy.ndimage import zoom

    rng = np.random.default_rng(seed)
    coarse = rng.random((shape[0] // 15 + 2, shape[1] // 15 + 2))
    image = zoom(coarse, 15, order=3)[: shape[0], : shape[1]]
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


@pytest.fixture()
def twins(tmp_path, medtransfer_home):
    """a: an image; b: a re-saved, slightly noisy and 2-px cropped copy; c: unrelated; d: an exact copy of c
    as JPEG-free PNG with other file bytes (other compression level)."""
    base = _texture(0)
    noisy = np.clip(base[2:, 2:].astype(float) + np.random.default_rng(1).normal(0, 6, base[2:, 2:].shape), 0, 255)
    folder = tmp_path / "images"
    paths = [_png(folder / "a.png", base), _png(folder / "b.png", noisy.astype(np.uint8)),
             _png(folder / "c.png", _texture(7))]
    Image.fromarray(_texture(7)).save(folder / "d.png", compress_level=1)
    paths.append(folder / "d.png")
    return paths


def test_near_and_exact_duplicates_are_found_and_unrelated_images_are_not(twins):
    prints = fingerprints(twins)
    assert prints.hashes[2] == prints.hashes[3]  # same pixels, different file bytes
    assert twins[2].read_bytes() != twins[3].read_bytes()
    pairs = {(i, j): c for i, j, c in duplicate_pairs(prints)}
    assert set(pairs) == {(0, 1), (2, 3)}
    assert pairs[(0, 1)] > duplicates.CORRELATION_THRESHOLD
    correlation = float(prints.thumbnails[0] @ prints.thumbnails[2])
    assert abs(correlation) < 0.5  # unrelated textures
    assert prints.thumbnails.shape == (4, 64 * 64)
    assert np.allclose(np.linalg.norm(prints.thumbnails, axis=1), 1.0, atol=1e-5)


def test_colour_copy_of_a_grey_image_is_a_duplicate(tmp_path, medtransfer_home):
    grey = _texture(3)
    rgb = np.stack([grey] * 3, axis=-1)
    paths = [_png(tmp_path / "g.png", grey), _png(tmp_path / "rgb.png", rgb)]
    pairs = duplicate_pairs(fingerprints(paths))
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]
    assert pairs[0][2] > 0.999


def test_constant_images_match_by_hash_only(tmp_path, medtransfer_home):
    paths = [_png(tmp_path / f"{n}.png", np.full((20, 20), v, np.uint8)) for n, v in (("x", 0), ("y", 0), ("z", 9))]
    pairs = duplicate_pairs(fingerprints(paths))
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]


def test_groups_are_connected_components():
    assert connected_groups(6, [(0, 1), (1, 4), (2, 5)]) == [[0, 1, 4], [2, 5]]
    assert connected_groups(3, []) == []
    split_of = {"a": "training", "b": "test", "c": "training", "d": "training"}
    assert cross_split_groups([["a", "b"], ["c", "d"]], split_of) == [{"training": ["a"], "test": ["b"]}]


def test_3d_volumes_are_compared_by_pooled_thumbnails(tmp_path, medtransfer_home):
    rng = np.random.default_rng(0)
    volume = np.kron(rng.random((5, 5, 5)), np.ones((8, 8, 8))).astype(np.float32)
    for name, array in (("v", volume), ("w", volume * 3 + 1 + rng.normal(0, 0.01, volume.shape)),
                        ("u", np.kron(rng.random((5, 5, 5)), np.ones((8, 8, 8))))):
        nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4)), tmp_path / f"{name}.nii.gz")
    prints = fingerprints([tmp_path / f"{n}.nii.gz" for n in "vwu"])
    assert prints.thumbnails.shape == (3, 32 ** 3)
    assert [(i, j) for i, j, _ in duplicate_pairs(prints)] == [(0, 1)]


def test_fingerprints_are_cached_and_invalidated_by_a_changed_file(twins, monkeypatch):
    first = fingerprints(twins)
    calls = []
    original = duplicates.fingerprint_file
    monkeypatch.setattr(duplicates, "fingerprint_file", lambda path: calls.append(path) or original(path))
    again = fingerprints(twins)
    assert calls == [] and again.hashes == first.hashes
    assert np.array_equal(again.thumbnails, first.thumbnails)
    _png(twins[2], _texture(11))  # rewritten: size or mtime changes
    changed = fingerprints(twins)
    assert [p.name for p in calls] == ["c.png"]
    assert changed.hashes[2] != first.hashes[2]


def test_split_keeps_groups_whole_and_equals_the_plain_split_without_groups():
    ids = [f"c{i:02d}" for i in range(40)]
    plain = split_ids(ids, 0.2, 0.1, seed=3, ordered=False)
    assert split_ids(ids, 0.2, 0.1, seed=3, ordered=False, groups=[]) == plain
    assert [len(s) for s in plain] == [28, 4, 8]
    groups = [["c00", "c01", "c02"], ["c10", "c11"], ["c20", "c21", "c22", "c23", "c24"]]
    training, validation, test = split_ids(ids, 0.2, 0.1, seed=3, ordered=False, groups=groups)
    assert len(test) == 8 and len(validation) == 4 and len(training) == 28
    where = {case: name for name, split in zip(("tr", "va", "te"), (training, validation, test)) for case in split}
    for group in groups:
        assert len({where[case] for case in group}) == 1
    ordered = split_ids(ids, 0.2, 0.1, seed=0, ordered=True, groups=[["c31", "c32"]])
    # serial sections: the test block ends where the group would overshoot it; the group stays whole
    assert ordered[2] == [f"c{i}" for i in range(33, 40)]
    assert ordered[1] == ["c29", "c30", "c31", "c32"]


def _twin_folder(folder, count=20, twins_of=((0, 1), (2, 3), (3, 4))):
    images = {i: _texture(100 + i, (64, 80)) for i in range(count)}
    for a, b in twins_of:
        images[b] = np.clip(images[a].astype(int) + 3, 0, 255).astype(np.uint8)
    for i, image in images.items():
        _png(folder / "images" / f"case{i:02d}.png", image)
        label = np.zeros(image.shape, np.uint8)
        label[10:30, 20:40] = 1
        _png(folder / "labels" / f"case{i:02d}.png", label)
    return folder


def test_manifest_builder_stores_groups_and_splits_by_them(tmp_path, medtransfer_home):
    folder = _twin_folder(tmp_path / "data")
    content = build_manifest(folder, test_fraction=0.3, validation_fraction=0.1, seed=0)
    assert content["channels"] == 1
    assert content["near_duplicate_groups"] == [["case00", "case01"], ["case02", "case03", "case04"]]
    assert "0.95" in content["near_duplicate_rule"]
    split_of = {c["id"]: s for s in ("training", "validation", "test") for c in content[s]}
    assert all(len({split_of[i] for i in group}) == 1 for group in content["near_duplicate_groups"])
    plain = build_manifest(folder, test_fraction=0.3, validation_fraction=0.1, seed=0, near_duplicates=False)
    assert "near_duplicate_groups" not in plain


def test_data_check_reports_near_duplicates_across_splits(tmp_path, medtransfer_home, capsys):
    folder = _twin_folder(tmp_path / "data")
    output = tmp_path / "m.json"
    assert cli(["data", "manifest", str(folder), "--output", str(output)]) == 0
    assert cli(["data", "check", str(output), "--data-root", str(folder)]) == 0
    assert "0 duplicate group(s) cross splits" in capsys.readouterr().out
    content = json.loads(output.read_text())
    case = next(c for c in content["training"] + content["validation"] if c["id"] == "case01") \
        if any(c["id"] == "case01" for c in content["training"] + content["validation"]) else None
    # move one twin of the first group into another split than its partner (a hand-edited, leaking split)
    source = next(s for s in ("training", "validation", "test") if any(c["id"] == "case01" for c in content[s]))
    target = "test" if source != "test" else "training"
    case = next(c for c in content[source] if c["id"] == "case01")
    content[source].remove(case)
    content[target].append(case)
    content.pop("near_duplicate_groups")  # found from the images alone, not only from the stored groups
    content["fractions"] = {k: [i for i in v if i != "case01"] for k, v in content["fractions"].items()}
    output.write_text(json.dumps(content))
    assert cli(["data", "check", str(output), "--data-root", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "LEAK" in out and "case00" in out and "case01" in out
    assert "1 duplicate group(s) cross splits" in out


def test_rgb_png_folder_gets_three_channels(tmp_path, medtransfer_home):
    folder = tmp_path / "rgb"
    for i in range(6):
        grey = _texture(200 + i, (40, 48))
        _png(folder / "images" / f"x{i}.png", np.stack([grey, grey[::-1], 255 - grey], axis=-1))
        _png(folder / "labels" / f"x{i}.png", (grey > 128).astype(np.uint8))
    content = build_manifest(folder, test_fraction=0.34, validation_fraction=0.17)
    assert content["channels"] == 3


# Real data ------------------------------------------------------------------------------------------------
def _splits(manifest):
    return {c["id"]: s for s in ("training", "validation", "test") for c in manifest.content[s]}


def test_busi_manifest_keeps_its_near_duplicate_groups_in_one_split(test_data, medtransfer_home):
    manifest = open_manifest("busi_breast_us_lesions", data_root=test_data / "busi_breast_us_lesions")
    split_of = _splits(manifest)
    assert len(split_of) == 647
    assert {s: sum(v == s for v in split_of.values()) for s in ("training", "validation", "test")} == \
        {"training": 453, "validation": 65, "test": 129}
    groups = manifest.near_duplicate_groups
    assert len(groups) == 100 and sum(map(len, groups)) == 225
    assert cross_split_groups(groups, split_of) == []
    cases = {c["id"]: c for s in ("training", "validation", "test") for c in manifest.content[s]}
    found = find_duplicates(list(cases), [test_data / "busi_breast_us_lesions" / c["image"] for c in cases.values()])
    assert len(found.pairs) == 151 and found.groups == groups  # the stored groups are what the rule finds
    assert sum(cases[a]["class"] != cases[b]["class"] for a, b, _ in found.pairs) == 8
    assert manifest.channels == 1


def test_busbra_manifest_is_split_by_patient_on_the_official_fold(test_data):
    folder = test_data / "busbra_breast_us_lesions"
    manifest = open_manifest("busbra_breast_us_lesions", data_root=folder)
    split_of = _splits(manifest)
    with open(folder / "cases.csv", newline="") as stream:
        rows = {row["file"][:-4]: row for row in csv.DictReader(stream)}
    assert set(split_of) == set(rows) and len(rows) == 1875
    patients = {}
    for case_id, split in split_of.items():
        patients.setdefault(rows[case_id]["patient_case"], set()).add(split)
    assert len(patients) == 1064 and all(len(splits) == 1 for splits in patients.values())
    assert {i for i, s in split_of.items() if s == "test"} == \
        {i for i, r in rows.items() if r["official_5fold_test_fold"] == "1"}
    cases = [c for s in ("training", "validation", "test") for c in manifest.content[s]]
    assert all(c["class"] == {"benign": 0, "malignant": 1}[rows[c["id"]]["pathology"]] for c in cases)
    assert manifest.content["class_meaning"]["1"].startswith("malignant")
    fractions = [set(manifest.case_ids("training", f)) for f in ("0.05", "0.1", "0.25", "0.5", "1.0")]
    assert all(a < b for a, b in zip(fractions, fractions[1:]))
