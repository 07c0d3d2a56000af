"""DICOM series reading on the shared real series, checked against their SimpleITK-made NIfTI copies.

Broken inputs are built from copies in tmp_path; the shared data is never modified.
"""

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medtransfer.data.dicom import (
    DicomInputError,
    SeveralSeriesError,
    SliceSpacingError,
    check_geometry,
    find_series,
    read_series,
    select_series,
)

MR = "dicom_mr_brain_tumor_progression"
SERIES_WITH_NIFTI = [
    ("dicom_ct_liver_seg/dicom/ct", "dicom_ct_liver_seg/images/ct_3slice.nii.gz"),
    ("dicom_ct_totalseg_example/dicom/ct", "dicom_ct_totalseg_example/images/example_ct.nii.gz"),
    (f"{MR}/dicom/PGBM-003_T1post", f"{MR}/images/PGBM-003_T1post.nii.gz"),
    (f"{MR}/dicom/PGBM-003_FLAIRreg", f"{MR}/images/PGBM-003_FLAIRreg.nii.gz"),
    (f"{MR}/dicom/HippoCrop_artificial", f"{MR}/images/HippoCrop_artificial.nii.gz"),
]


@pytest.fixture()
def hippo_copy(test_data, tmp_path) -> Path:
    """A writable copy of the small (34x50x40, 1 mm) HippoCrop series."""
    folder = tmp_path / "hippo"
    shutil.copytree(test_data / MR / "dicom" / "HippoCrop_artificial", folder)
    return folder


def _edit(path: Path, **attributes) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


@pytest.mark.parametrize(("dicom", "nifti"), SERIES_WITH_NIFTI, ids=[d.split("/")[-1] for d, _ in SERIES_WITH_NIFTI])
def test_read_series_matches_nifti_copy(test_data, dicom, nifti):
    array, meta = read_series(test_data / dicom)
    reference = nib.load(test_data / nifti)
    expected = np.asanyarray(reference.dataobj)
    assert array.shape == expected.shape
    assert array.dtype == expected.dtype
    assert np.array_equal(array, expected)
    # NIfTI stores the affine as float32: agreement to 1e-4 mm is exact for these grids.
    np.testing.assert_allclose(meta["affine"], reference.affine, atol=1e-4)
    series = meta["series"]
    assert len(series.files) == array.shape[2] == len(series.sop_instance_uids)
    assert np.all(np.diff(series.slice_positions) > 0)
    assert meta["warnings"] == []


def test_oblique_mr_affine_follows_slice_normal(test_data):
    """T1post is tilted ~11 degrees and its file names are not in position order: z must still follow the
    normal, and each slice's ImagePositionPatient must be where the affine puts voxel (0, 0, k)."""
    _, meta = read_series(test_data / MR / "dicom" / "PGBM-003_T1post")
    series, affine = meta["series"], meta["affine"]
    assert list(series.files) != sorted(series.files)
    lps_from_ras = np.diag([-1.0, -1.0, 1.0])
    for k, item in enumerate(series.slices):
        np.testing.assert_allclose(lps_from_ras @ (affine @ [0, 0, k, 1])[:3], item.position, atol=1e-3)
    np.testing.assert_allclose(lps_from_ras @ affine[:3, 2] / meta["spacing"][2], series.normal, atol=1e-6)


def test_find_series_groups_recursively(test_data):
    found = find_series(test_data / MR / "dicom")
    assert sorted(len(files) for files in found.values()) == [22, 22, 40]
    t1 = select_series(test_data / MR / "dicom" / "PGBM-003_T1post")
    assert sorted(found[t1.uid]) == sorted(t1.files)


def test_blank_uids_get_deterministic_placeholders(test_data):
    """The TotalSegmentator example was de-identified by blanking Study/Series/SOP Instance UIDs in the dataset;
    the SOP Instance UIDs survive in the file meta and must be the ones used."""
    folder = test_data / "dicom_ct_totalseg_example" / "dicom" / "ct"
    series = select_series(folder)
    assert series.placeholder_uids == ("SeriesInstanceUID", "StudyInstanceUID")
    assert select_series(folder).uid == series.uid and select_series(folder).study_uid == series.study_uid
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in series.files]
    assert list(series.sop_instance_uids) == [h.file_meta.MediaStorageSOPInstanceUID for h in headers]
    assert series.frame_of_reference_uid == "1.3.12.2.1107.5.1.4.60064.30000022120807274275100000041"


def test_two_series_without_choice_lists_both(test_data, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("PGBM-003_T1post", "PGBM-003_FLAIRreg"):
        for path in (test_data / MR / "dicom" / name).glob("*.dcm"):
            shutil.copy(path, mixed / f"{name}_{path.name}")
    t1 = select_series(test_data / MR / "dicom" / "PGBM-003_T1post")
    flair = select_series(test_data / MR / "dicom" / "PGBM-003_FLAIRreg")
    with pytest.raises(DicomInputError) as error:
        read_series(mixed)
    message = str(error.value)
    assert str(mixed) in message and "2 image series" in message and "series_uid" in message
    for series, description in ((t1, "'T1post'"), (flair, "'FLAIR_reg'")):
        assert series.uid in message and description in message
    assert message.count("files=22") == 2 and message.count("modality=MR") == 2
    assert isinstance(error.value, SeveralSeriesError)  # callers (segment) read the type, not the text
    assert sorted(error.value.series_uids) == sorted([t1.uid, flair.uid])

    array, meta = read_series(mixed, series_uid=flair.uid)
    assert meta["series"].uid == flair.uid
    flair_nifti = nib.load(test_data / MR / "images" / "PGBM-003_FLAIRreg.nii.gz")
    assert np.array_equal(array, np.asanyarray(flair_nifti.dataobj))

    with pytest.raises(DicomInputError, match=r"no image series with series_uid=1\.2\.3(.|\n)*T1post"):
        select_series(mixed, series_uid="1.2.3")
    with pytest.raises(DicomInputError, match=rf"series_uid={t1.uid} given with a SeriesInfo for {flair.uid}"):
        read_series(meta["series"], series_uid=t1.uid)


def test_missing_middle_slice_is_a_gap(hippo_copy, caplog):
    (hippo_copy / "20.dcm").unlink()
    with pytest.raises(DicomInputError) as error:
        read_series(hippo_copy)
    message = str(error.value)
    assert str(hippo_copy) in message
    assert "gap of 2.000 mm" in message and "19.000 mm (19.dcm)" in message and "21.000 mm (21.dcm)" in message
    assert "allow_uneven=True" in message and isinstance(error.value, SliceSpacingError)

    with caplog.at_level(logging.WARNING, logger="medtransfer.data.dicom"):
        array, meta = read_series(hippo_copy, allow_uneven=True)
    assert array.shape == (34, 50, 39)
    assert len(meta["warnings"]) == 1 and "gap of 2.000 mm" in meta["warnings"][0]
    assert "gap of 2.000 mm" in caplog.text


def test_duplicated_slice_names_both_files(hippo_copy):
    shutil.copy(hippo_copy / "7.dcm", hippo_copy / "7_copy.dcm")
    with pytest.raises(DicomInputError, match=r"duplicated slice positions: 7\.dcm and 7_copy\.dcm at 7\.000 mm"):
        read_series(hippo_copy)


@pytest.mark.parametrize(
    ("file_changes", "expected"),
    [
        ({"ImageOrientationPatient": [0, 1, 0, 0, 0, -1]}, r"mixed slice orientations; 1 file\(s\) differ .*: 12\.dcm"),
        ({"Rows": 49}, r"different sizes .*49x34 in 1 file\(s\) e\.g\. 12\.dcm"),
        ({"ImagePositionPatient": [0, 0, 12.2]}, r"uneven slice spacing from 0\.800 mm .* to 1\.200 mm"),
        ({"ImagePositionPatient": [3, 0, 12]}, r"drift 3\.000 mm within the image plane"),
    ],
    ids=["orientation", "size", "uneven", "shear"],
)
def test_geometry_defects_are_errors(hippo_copy, file_changes, expected):
    _edit(hippo_copy / "12.dcm", **file_changes)
    series = select_series(hippo_copy)
    with pytest.raises(DicomInputError, match=expected):
        check_geometry(series)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda ds: delattr(ds, "ImagePositionPatient"), r"12\.dcm: lacks ImagePositionPatient"),
        (lambda ds: setattr(ds, "NumberOfFrames", 2), r"12\.dcm: a multi-frame image \(2 frames\)"),
    ],
    ids=["no-position", "multi-frame"],
)
def test_slices_that_cannot_be_placed_are_named(hippo_copy, change, expected):
    ds = pydicom.dcmread(hippo_copy / "12.dcm")
    change(ds)
    ds.save_as(hippo_copy / "12.dcm")
    with pytest.raises(DicomInputError, match=expected):
        select_series(hippo_copy)


@pytest.mark.parametrize("kind", ["seg", "sr"])
def test_non_image_dicom_is_excluded_with_warning(test_data, tmp_path, caplog, kind):
    folder = tmp_path / "ct"
    shutil.copytree(test_data / "dicom_ct_liver_seg" / "dicom" / "ct", folder)
    if kind == "seg":
        shutil.copy(test_data / "dicom_ct_liver_seg" / "dicom" / "seg" / "liver_seg.dcm", folder / "extra.dcm")
        expected = "extra.dcm (Segmentation Storage, SEG)"
    else:
        report = Dataset()
        report.file_meta = FileMetaDataset()
        report.file_meta.MediaStorageSOPClassUID = report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
        report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID = generate_uid()
        report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        report.Modality = "SR"
        report.StudyInstanceUID = pydicom.dcmread(folder / "01.dcm", stop_before_pixels=True).StudyInstanceUID
        report.SeriesInstanceUID = generate_uid()
        report.save_as(folder / "extra.dcm", enforce_file_format=True)
        expected = "extra.dcm (Basic Text SR Storage, SR)"
    with caplog.at_level(logging.WARNING, logger="medtransfer.data.dicom"):
        array, meta = read_series(folder)
    assert array.shape == (512, 512, 3) and len(meta["series"].files) == 3
    assert "1 non-image DICOM object(s) excluded" in caplog.text and expected in caplog.text


def test_garbage_file_is_reported_by_name(hippo_copy, caplog):
    (hippo_copy / "garbage.dcm").write_bytes(b"\x00\xffnot dicom" * 200)
    with caplog.at_level(logging.WARNING, logger="medtransfer.data.dicom"):
        array, _ = read_series(hippo_copy)
    assert array.shape == (34, 50, 40)
    assert "1 file(s) skipped, not readable as DICOM" in caplog.text
    assert f"{hippo_copy / 'garbage.dcm'} (InvalidDicomError" in caplog.text


def test_empty_missing_and_image_free_folders(tmp_path, test_data):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DicomInputError, match=rf"{empty}: the folder is empty"):
        read_series(empty)
    with pytest.raises(DicomInputError, match=r"nowhere: not a folder"):
        find_series(tmp_path / "nowhere")
    only_seg = tmp_path / "only_seg"
    shutil.copytree(test_data / "dicom_ct_liver_seg" / "dicom" / "seg", only_seg)
    (only_seg / "notes.txt").write_text("not dicom")
    assert find_series(only_seg) == {}
    with pytest.raises(DicomInputError, match=r"no DICOM image series found among 2 file\(s\) \(1 not readable"):
        select_series(only_seg)
