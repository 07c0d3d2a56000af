"""`medtransfer data manifest` and `data check` on hostile folders and manifests: one clear line each."""

import json

import nibabel as nib
import numpy as np
import pytest

from medtransfer.data.manifest_builder import build_manifest
from tests.hostile.conftest import clear_error, medtransfer


def nifti(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def dataset(folder, n=6, shape=(12, 12, 8)):
    rng = np.random.default_rng(0)
    for index in range(n):
        image = rng.normal(size=shape).astype(np.float32)
        label = (image > 0.8).astype(np.uint8)
        nifti(folder / "images" / f"case{index}.nii.gz", image)
        nifti(folder / "labels" / f"case{index}.nii.gz", label)
    return folder


# `data manifest` -----------------------------------------------------------------------------------------------
MANIFEST_OPTIONS = [
    ("test-fraction-negative", ["--test-fraction", "-0.5"], "test_fraction -0.5 is outside [0, 1)"),
    ("test-fraction-above-1", ["--test-fraction", "1.2"], "test_fraction 1.2 is outside [0, 1)"),
    ("test-fraction-1", ["--test-fraction", "1"], "outside [0, 1)"),
    ("test-fraction-nan", ["--test-fraction", "nan"], "outside [0, 1)"),
    ("validation-fraction-above-1", ["--validation-fraction", "1.5"], "validation_fraction 1.5"),
    ("validation-fraction-negative", ["--validation-fraction", "-0.1"], "validation_fraction -0.1"),
    ("no-training-left", ["--test-fraction", "0.5", "--validation-fraction", "0.5"], "at least one training case"),
    ("label-map-all-zero", ["--label-map", "1:0"], "every value to 0"),
    ("label-map-value-2", ["--label-map", "1:2"], "onto {0, 1}"),
    ("label-map-malformed", ["--label-map", "1"], "--label-map '1'"),
    ("label-map-text", ["--label-map", "tumour:1"], "--label-map 'tumour:1'"),
    ("fraction-text", ["--test-fraction", "a lot"], "invalid float value"),
]


@pytest.mark.parametrize("options, needle", [c[1:] for c in MANIFEST_OPTIONS], ids=[c[0] for c in MANIFEST_OPTIONS])
def test_manifest_options_out_of_range(options, needle, guard, tmp_path, capsys):
    folder = dataset(tmp_path / "data")
    guard.snapshot()
    result = medtransfer(["data", "manifest", folder, "--output", tmp_path / "m.json", *options], capsys)
    clear_error(result, 2, needle)
    assert not (tmp_path / "m.json").exists()


def _no_images(folder):
    folder.mkdir()


def _no_labels_dir(folder):
    nifti(folder / "images" / "a.nii.gz", np.zeros((8, 8, 8), np.float32))


def _missing_label(folder):
    dataset(folder, n=3)
    (folder / "labels" / "case1.nii.gz").unlink()


def _zero_byte_image(folder):
    dataset(folder, n=3)
    (folder / "images" / "case0.nii.gz").write_bytes(b"")


def _truncated_image(folder):
    dataset(folder, n=3)
    path = folder / "images" / "case0.nii.gz"
    path.write_bytes(path.read_bytes()[:60])


def _text_as_image(folder):
    dataset(folder, n=3)
    (folder / "images" / "case0.nii.gz").write_text("this is not an image\n")


def _one_case(folder):
    dataset(folder, n=1)


BAD_FOLDERS = [
    ("folder-missing", None, "no images/ folder"),
    ("no-image-files", _no_images, "no images/ folder"),
    ("label-folder-missing", _no_labels_dir, "no label with the same name"),
    ("label-missing", _missing_label, "case1.nii.gz: no label"),
    ("zero-byte-first-image", _zero_byte_image, "case0.nii.gz"),
    ("truncated-first-image", _truncated_image, "case0.nii.gz"),
    ("text-as-image", _text_as_image, "case0.nii.gz"),
    ("one-case-only", _one_case, "too few cases (1)"),
]


@pytest.mark.parametrize("make, needle", [c[1:] for c in BAD_FOLDERS], ids=[c[0] for c in BAD_FOLDERS])
def test_manifest_of_a_bad_folder(make, needle, guard, tmp_path, capsys):
    folder = tmp_path / "data"
    if make is not None:
        make(folder)
    guard.snapshot()
    result = medtransfer(["data", "manifest", folder, "--output", tmp_path / "m.json"], capsys)
    clear_error(result, 2, needle)
    assert not (tmp_path / "m.json").exists()


def test_manifest_never_overwrites_silently(guard, tmp_path, capsys):
    folder = dataset(tmp_path / "data")
    (tmp_path / "m.json").write_text("{}")
    guard.snapshot()
    clear_error(medtransfer(["data", "manifest", folder, "--output", tmp_path / "m.json"], capsys), 2, "--force")


# `data check` --------------------------------------------------------------------------------------------------
@pytest.fixture()
def good_manifest(tmp_path):
    folder = dataset(tmp_path / "data")
    content = build_manifest(folder, name="hostile", test_fraction=0.34, validation_fraction=0.17)
    return folder, content


def _write(tmp_path, content):
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(content) if not isinstance(content, bytes) else "")
    if isinstance(content, bytes):
        path.write_bytes(content)
    return path


STRUCTURE = [
    ("training-is-a-string", lambda c: c.update(training="case0"), "'training' must be a list"),
    ("image-is-a-number", lambda c: c["training"][0].update(image=42), "training[0].image must be a string"),
    ("label-is-a-list", lambda c: c["test"][0].update(label=["a"]), "test[0].label must be a string"),
    ("case-is-a-string", lambda c: c["validation"].__setitem__(0, "case"), "validation[0] must be an object"),
    ("dimensions-text", lambda c: c.update(dimensions="three"), "dimensions must be 2 or 3"),
    ("dimensions-4", lambda c: c.update(dimensions=4), "dimensions must be 2 or 3"),
    ("fractions-not-mapping", lambda c: c.update(fractions=[0.1]), "'fractions' must map"),
    ("fraction-ids-unknown", lambda c: c["fractions"].update({"1.0": ["ghost"]}), "lists ids not in training"),
    ("duplicate-id", lambda c: c["test"].append(dict(c["training"][0])), "appears in training and test"),
    ("label-map-all-zero", lambda c: c.update(label_map={"1": 0}), "every value to 0"),
    ("label-map-text-value", lambda c: c.update(label_map={"1": "yes"}), "label_map must map integer"),
    ("missing-key", lambda c: c.pop("fractions"), "missing key(s)"),
]


@pytest.mark.parametrize("change, needle", [c[1:] for c in STRUCTURE], ids=[c[0] for c in STRUCTURE])
def test_check_of_a_manifest_with_wrong_types(change, needle, good_manifest, guard, tmp_path, capsys):
    folder, content = good_manifest
    change(content)
    path = _write(tmp_path, content)
    guard.snapshot()
    clear_error(medtransfer(["data", "check", path, "--data-root", folder], capsys), 2, str(path), needle)


RAW = [
    ("not-json", b"{training: [", "not valid JSON"),
    ("empty-file", b"", "not valid JSON"),
    ("json-list", b"[1, 2, 3]", "a manifest is a JSON object"),
    ("non-utf8", b"\xff\xfe{}", "not valid JSON"),
]


@pytest.mark.parametrize("raw, needle", [c[1:] for c in RAW], ids=[c[0] for c in RAW])
def test_check_of_an_unreadable_manifest(raw, needle, guard, tmp_path, capsys):
    path = tmp_path / "hostile.json"
    path.write_bytes(raw)
    guard.snapshot()
    clear_error(medtransfer(["data", "check", path], capsys), 2, str(path), needle)


def _case_file(content, folder, split="training", key="image"):
    return folder / content[split][0][key]


CASE_FILES = [
    ("truncated-nifti", lambda p: p.write_bytes(p.read_bytes()[:100]), "image"),
    ("zero-byte-image", lambda p: p.write_bytes(b""), "image"),
    ("nan-in-image", lambda p: nifti(p, np.full((12, 12, 8), np.nan, np.float32)), "image"),
    ("inf-in-image", lambda p: nifti(p, np.where(np.eye(12)[:, :, None] > 0, np.inf, 1.0) * np.ones((12, 12, 8))),
     "image"),
    ("float-label", lambda p: nifti(p, np.full((12, 12, 8), 0.5, np.float32)), "label"),
    ("label-values-0-2", lambda p: nifti(p, np.full((12, 12, 8), 2, np.uint8)), "label"),
    ("label-other-shape", lambda p: nifti(p, np.zeros((6, 6, 4), np.uint8)), "label"),
    ("2d-image-for-3d", lambda p: nifti(p, np.zeros((12, 12), np.float32)), "image"),
    ("four-channels", lambda p: nifti(p, np.zeros((12, 12, 8, 4), np.float32)), "image"),
    ("missing-file", lambda p: p.unlink(), "image"),
    ("text-file", lambda p: p.write_text("hello"), "image"),
]


@pytest.mark.parametrize("damage, key", [c[1:] for c in CASE_FILES], ids=[c[0] for c in CASE_FILES])
def test_check_names_each_bad_case_file(damage, key, good_manifest, guard, tmp_path, capsys):
    folder, content = good_manifest
    path = _write(tmp_path, content)
    target = _case_file(content, folder, key=key)
    damage(target)
    guard.snapshot()
    result = medtransfer(["data", "check", path, "--data-root", folder], capsys)
    clear_error(result, 1, f"FAIL training/{content['training'][0]['id']}", target.name)
    assert " of 6 cases OK" in result.out and "6 of 6" not in result.out


def test_check_of_a_non_utf8_file_name(good_manifest, guard, tmp_path, capsys):
    folder, content = good_manifest
    odd = folder / "images" / "ca\udcffse.nii.gz"  # a byte that is not UTF-8 (surrogate-escaped)
    try:
        nifti(odd, np.zeros((12, 12, 8), np.float32))
    except (OSError, UnicodeEncodeError):
        pytest.skip("the file system refuses non-UTF-8 names")
    content["training"][0]["image"] = "images/ca\udcffse.nii.gz"
    path = tmp_path / "hostile.json"
    path.write_bytes(json.dumps(content).encode("utf-8", "surrogateescape"))
    guard.snapshot()
    result = medtransfer(["data", "check", path, "--data-root", folder], capsys)
    clear_error(result, 0, "6 of 6 cases OK")  # a valid file with an odd name is a valid case
