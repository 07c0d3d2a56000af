"""`medtransfer segment` with hostile scans, output folders and models: bad scans are rows, not crashes."""

import csv
import errno
import subprocess
import sys
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.hostile.conftest import clear_error, medtransfer
from tests.inference.test_bundle_loading import coarse_manifest, make_run

SHAPE = (20, 20, 12)


@pytest.fixture(scope="module")
def model(tmp_path_factory, test_data):
    """A finished tiny 3D run folder (read-only use: every case checks it is unchanged)."""
    return make_run(tmp_path_factory.mktemp("hostile_model") / "run", test_data)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return coarse_manifest(tmp_path_factory.mktemp("hostile_manifest"))


def scan(path, data=None, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32) if data is None else data
    nib.save(nib.Nifti1Image(np.asarray(data), np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine), str(path))
    return path


def rows(output):
    return list(csv.DictReader(open(output / "summary.csv")))


def segment(args, model, manifest, capsys):
    return medtransfer(["segment", model, *map(str, args), "--no-progress"], capsys)


def dicom_without_pixels(folder):
    folder.mkdir(parents=True)
    for index in range(3):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", "1.2.3.4", "1.2.3"
        ds.PatientName, ds.PatientID = "Hostile", "H1"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, index], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.Rows, ds.Columns = [1, 1], 8, 8
        ds.InstanceNumber = index + 1
        ds.save_as(folder / f"slice{index}.dcm", enforce_file_format=True)
    return folder


def _huge_header(path):
    """A header that claims 30000³ float32 voxels (108 TB) over a few bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 1000)


BAD_SCANS = [
    ("truncated-nifti", lambda p: p.write_bytes(scan(p).read_bytes()[:200]), "bad.nii.gz"),
    ("zero-byte", lambda p: (p.parent.mkdir(parents=True, exist_ok=True), p.write_bytes(b"")), "bad.nii.gz"),
    ("text-as-nifti", lambda p: (p.parent.mkdir(parents=True, exist_ok=True), p.write_text("no image")), "bad.nii.gz"),
    ("nan-scan", lambda p: scan(p, np.full(SHAPE, np.nan, np.float32)), "NaN"),
    ("inf-scan", lambda p: scan(p, np.full(SHAPE, np.inf, np.float32)), "bad.nii.gz"),
    ("huge-header", _huge_header, "bad.nii.gz"),
    ("2d-scan", lambda p: scan(p, np.zeros((20, 20), np.float32)), "bad.nii.gz"),
    ("4d-scan", lambda p: scan(p, np.zeros((*SHAPE, 3), np.float32)), "bad.nii.gz"),
    ("empty-volume", lambda p: scan(p, np.zeros((0, 20, 12), np.float32)), "bad.nii.gz"),
]


@pytest.mark.parametrize("make, needle", [c[1:] for c in BAD_SCANS], ids=[c[0] for c in BAD_SCANS])
def test_a_bad_scan_is_a_failed_row_and_the_others_are_segmented(make, needle, model, manifest, guard, tmp_path,
                                                                 capsys):
    good = scan(tmp_path / "scans" / "good.nii.gz")
    make(tmp_path / "scans" / "bad.nii.gz")
    output = tmp_path / "masks"
    guard.allow(output).snapshot()
    result = segment([tmp_path / "scans", "--output", output], model, manifest, capsys)
    clear_error(result, 1, "1 of 2 scans segmented", needle)
    status = {row["scan"]: row for row in rows(output)}
    assert status["good"]["status"] == "ok" and (output / "good_seg.nii.gz").is_file() and good.is_file()
    assert status["bad"]["status"] == "failed" and "bad.nii.gz" in status["bad"]["error"]


def test_dicom_without_pixel_data(model, manifest, guard, tmp_path, capsys):
    scan(tmp_path / "scans" / "good.nii.gz")
    dicom_without_pixels(tmp_path / "scans" / "series")
    output = tmp_path / "masks"
    guard.allow(output).snapshot()
    result = segment([tmp_path / "scans" / "good.nii.gz", tmp_path / "scans" / "series", "--output", output], model,
                     manifest, capsys)
    clear_error(result, 1, "1 of 2 scans segmented", "series")


def test_same_case_name_from_two_folders_gets_two_masks_and_the_mapping(model, manifest, guard, tmp_path, capsys):
    first = scan(tmp_path / "site_a" / "case.nii.gz")
    second = scan(tmp_path / "site_b" / "case.nii.gz", np.random.default_rng(1).normal(size=SHAPE).astype(np.float32))
    output = tmp_path / "masks"
    guard.allow(output).snapshot()
    clear_error(segment([tmp_path / "site_a", tmp_path / "site_b", "--output", output], model, manifest, capsys), 0,
                "2 of 2 scans segmented")
    mapping = {row["input"]: row["output_nifti"] for row in rows(output)}
    assert set(mapping) == {str(first), str(second)} and len(set(mapping.values())) == 2


@pytest.mark.parametrize("where", ["equal", "inside"])
def test_output_in_an_input_folder_is_refused(where, model, manifest, guard, tmp_path, capsys):
    scan(tmp_path / "scans" / "a.nii.gz")
    output = tmp_path / "scans" if where == "equal" else tmp_path / "scans" / "masks"
    guard.snapshot()
    clear_error(segment([tmp_path / "scans", "--output", output], model, manifest, capsys), 2,
                "input folder", "masks would be mixed with the scans")


def test_a_second_segment_into_the_same_output_is_refused(model, manifest, guard, tmp_path, capsys):
    scan(tmp_path / "scans" / "a.nii.gz")
    output = tmp_path / "masks"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from medtransfer.folder_lock import FolderLock; "
        f"FolderLock({str(output)!r}, 'output folder').acquire(); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        guard.allow(output).snapshot()
        result = segment([tmp_path / "scans", "--output", output], model, manifest, capsys)
        clear_error(result, 2, f"output folder {output} is in use by process {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert not (output / "a_seg.nii.gz").exists()


def test_output_that_is_a_file(model, manifest, guard, tmp_path, capsys):
    scan(tmp_path / "scans" / "a.nii.gz")
    (tmp_path / "masks").write_text("a file, not a folder")
    guard.snapshot()
    clear_error(segment([tmp_path / "scans", "--output", tmp_path / "masks"], model, manifest, capsys), 2,
                str(tmp_path / "masks"), "cannot write the masks there")


def test_full_disk_up_front_is_one_error(model, manifest, guard, tmp_path, capsys, monkeypatch):
    scan(tmp_path / "scans" / "a.nii.gz")
    output = tmp_path / "masks"

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("medtransfer.inference.segment.os.fsync", full)
    guard.allow(output).snapshot()
    clear_error(segment([tmp_path / "scans", "--output", output], model, manifest, capsys), 2, str(output),
                "No space left on device")


def test_disk_full_midway_is_one_error_naming_the_file(model, manifest, guard, tmp_path, capsys, monkeypatch):
    for name in ("a", "b", "c"):
        scan(tmp_path / "scans" / f"{name}.nii.gz")
    output = tmp_path / "masks"
    from medtransfer.inference import segment as module

    real = module._write_nifti

    def fill_up(mask, affine, source, path):
        if path.name.startswith("b"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(mask, affine, source, path)

    monkeypatch.setattr(module, "_write_nifti", fill_up)
    guard.allow(output).snapshot()
    result = segment([tmp_path / "scans", "--output", output], model, manifest, capsys)
    clear_error(result, 2, "b_seg.nii.gz", "No space left on device", "1 scan(s) were written before")
    assert result.text.count("error:") == 1


def test_existing_masks_are_never_overwritten(model, manifest, guard, tmp_path, capsys):
    scan(tmp_path / "scans" / "a.nii.gz")
    output = tmp_path / "masks"
    output.mkdir()
    (output / "a_seg.nii.gz").write_bytes(b"a colleague's mask")
    guard.snapshot()
    clear_error(segment([tmp_path / "scans", "--output", output], model, manifest, capsys), 2, "--overwrite")


def test_missing_input_and_symlink_loop(model, manifest, guard, tmp_path, capsys):
    scan(tmp_path / "scans" / "a.nii.gz")
    (tmp_path / "scans" / "loop").symlink_to(tmp_path / "scans" / "loop")
    output = tmp_path / "masks"
    guard.allow(output).snapshot()
    result = segment([tmp_path / "scans" / "a.nii.gz", tmp_path / "nowhere.nii.gz", tmp_path / "scans" / "loop",
                      "--output", output], model, manifest, capsys)
    clear_error(result, 1, "nowhere.nii.gz: input not found", "of 3 scans segmented")


# bad models ----------------------------------------------------------------------------------------------------
def _copy_run(model, tmp_path):
    import shutil

    return shutil.copytree(model, tmp_path / "run")


def _zip_of(folder, target, extra=None):
    with zipfile.ZipFile(target, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zipped.write(path, f"bundle/{path.relative_to(folder)}")
        for name, info in (extra or {}).items():
            zipped.writestr(info if isinstance(info, zipfile.ZipInfo) else name, b"x" if info is None else b"")
    return target


def _run_with(model, tmp_path, name, data):
    run = _copy_run(model, tmp_path)
    (run / name).write_bytes(data)
    return run


def _weights_not_a_state_dict(model, tmp_path):
    from medtransfer.atomic import sha256_of, save_json

    run = _copy_run(model, tmp_path)
    torch.save([1, 2, 3], run / "model.pt")
    record = __import__("json").loads((run / "run.json").read_text())
    record["model_sha256"] = sha256_of(run / "model.pt")  # the checksum matches: the content is still wrong
    save_json(run / "run.json", record)
    return run


def _empty_folder(model, tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def _damaged_zip(model, tmp_path):
    (tmp_path / "b.zip").write_bytes(b"PK\x03\x04 not really a zip")
    return tmp_path / "b.zip"


BAD_MODELS = [
    ("missing", lambda m, t: t / "nope", "model not found"),
    ("run-json-corrupt", lambda m, t: _run_with(m, t, "run.json", b"{trunc"), "not a readable run record"),
    ("run-json-empty", lambda m, t: _run_with(m, t, "run.json", b""), "not a readable run record"),
    ("run-json-list", lambda m, t: _run_with(m, t, "run.json", b"[]"), "not a run record"),
    ("run-json-non-utf8", lambda m, t: _run_with(m, t, "run.json", b"\xff\xfe{"), "not a readable run record"),
    ("weights-tampered", lambda m, t: _run_with(m, t, "model.pt", b"tampered"), "sha256 differs"),
    ("weights-not-a-state-dict", _weights_not_a_state_dict, "model.pt"),
    ("folder-without-anything", _empty_folder, "neither a MONAI bundle"),
    ("damaged-zip", _damaged_zip, "not a readable zip"),
    ("zip-without-bundle", lambda m, t: _zip_of(m, t / "b.zip"), "holds no bundle"),
]


@pytest.mark.parametrize("make, needle", [c[1:] for c in BAD_MODELS], ids=[c[0] for c in BAD_MODELS])
def test_a_bad_model_is_one_error(make, needle, model, manifest, guard, tmp_path, capsys):
    scan(tmp_path / "scans" / "a.nii.gz")
    path = make(model, tmp_path)
    guard.snapshot()
    clear_error(segment([tmp_path / "scans", "--output", tmp_path / "masks"], path, manifest, capsys), 2, needle)
    assert not (tmp_path / "masks").exists()
