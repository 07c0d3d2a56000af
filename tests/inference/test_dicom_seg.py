"""DICOM-SEG decoding against the shipped dcmqi liver SEG, and write/read round trips on real CT series."""

import logging

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from medtransfer.data.dicom import DicomInputError, read_series, select_series
from medtransfer.inference.dicom_seg import read_dicom_seg, write_dicom_seg

LIVER = "dicom_ct_liver_seg"
TOTALSEG = "dicom_ct_totalseg_example"

# highdicom warns about the source data's single-component PatientName "JANCT000"; it is the fixture's, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name")


def _label(test_data, dataset, name):
    return np.asanyarray(nib.load(test_data / dataset / "labels" / name).dataobj)


def test_shipped_seg_decodes_to_reference_label(test_data):
    """The SEG lists its frames in descending z and lacks SpatialLocationsPreserved; neither may matter."""
    series = select_series(test_data / LIVER / "dicom" / "ct")
    mask = read_dicom_seg(test_data / LIVER / "dicom" / "seg" / "liver_seg.dcm", series)
    reference = _label(test_data, LIVER, "ct_3slice.nii.gz")
    assert mask.dtype == np.uint8
    assert np.array_equal(mask, reference)
    assert mask.sum(axis=(0, 1)).tolist() == [36233, 35645, 35220]


def test_round_trip_on_deidentified_totalseg_ct(test_data, tmp_path, caplog):
    folder = test_data / TOTALSEG / "dicom" / "ct"
    series = select_series(folder)
    mask = _label(test_data, TOTALSEG, "example_ct.nii.gz")
    with caplog.at_level(logging.WARNING, logger="medtransfer.inference.dicom_seg"):
        path = write_dicom_seg(mask, series, tmp_path / "out" / "liver.dcm", segment_label="liver")
    assert "blank SeriesInstanceUID, StudyInstanceUID" in caplog.text
    assert [p.name for p in path.parent.iterdir()] == ["liver.dcm"]  # no temp file left behind

    seg = pydicom.dcmread(path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.SegmentSequence[0].SegmentLabel == "liver"
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "medtransfer"
    # The source blanks Study/Series UIDs: the SEG carries SeriesInfo's deterministic placeholders instead.
    assert seg.StudyInstanceUID == series.study_uid == select_series(folder).study_uid
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == series.uid
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == {
        ds.file_meta.MediaStorageSOPInstanceUID for ds in sources
    }
    assert hd.seg.segread(path).segment_numbers == [1]
    assert np.array_equal(read_dicom_seg(path, series), mask)


def test_round_trip_frames_reference_their_slices(test_data, tmp_path):
    """A thresholded CT with one empty slice: each stored frame must hold mask[:, :, k].T for the slice it names
    (checked with pydicom alone), the empty slice is omitted and decodes to zeros, and the real Study UID is kept."""
    folder = test_data / LIVER / "dicom" / "ct"
    ct, meta = read_series(folder)
    series = meta["series"]
    mask = (ct > 100).astype(np.uint8)
    mask[:40, :, :] = 1  # asymmetric in x vs y, so a transposed write could not pass
    mask[:, :, 1] = 0
    path = write_dicom_seg(mask, series, tmp_path / "seg.dcm")

    seg = pydicom.dcmread(path)
    assert seg.StudyInstanceUID == pydicom.dcmread(series.files[0], stop_before_pixels=True).StudyInstanceUID
    assert seg.NumberOfFrames == 2
    z_of = {uid: k for k, uid in enumerate(series.sop_instance_uids)}
    for frame, pixels in zip(seg.PerFrameFunctionalGroupsSequence, seg.pixel_array):
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.array_equal(pixels, mask[:, :, z_of[source]].T)
    assert np.array_equal(read_dicom_seg(path, series), mask)


def test_round_trip_non_square_series(test_data, tmp_path):
    series = select_series(test_data / "dicom_mr_brain_tumor_progression" / "dicom" / "HippoCrop_artificial")
    mask = np.zeros((34, 50, 40), dtype=bool)
    mask[5:20, 10:45, 3:30] = True
    path = write_dicom_seg(mask, series, tmp_path / "hippo_seg.dcm")
    assert np.array_equal(read_dicom_seg(path, series), mask)

    with pytest.raises(ValueError, match=r"mask shape \(50, 34, 40\) .* expected \(x, y, z\) = \(34, 50, 40\)"):
        write_dicom_seg(mask.transpose(1, 0, 2), series, tmp_path / "bad.dcm")
    with pytest.raises(ValueError, match=r"not binary: values \[0, 2\]"):
        write_dicom_seg(mask.astype(np.uint8) * 2, series, tmp_path / "bad.dcm")
    assert not (tmp_path / "bad.dcm").exists()


def test_misaligned_or_foreign_seg_is_refused(test_data, tmp_path):
    liver = select_series(test_data / LIVER / "dicom" / "ct")
    other = select_series(test_data / TOTALSEG / "dicom" / "ct")
    seg_path = test_data / LIVER / "dicom" / "seg" / "liver_seg.dcm"
    with pytest.raises(DicomInputError, match=r"liver_seg\.dcm: DICOM-SEG vs series .*different FrameOfReferenceUID"):
        read_dicom_seg(seg_path, other)
    with pytest.raises(DicomInputError, match=r"01\.dcm: not a readable DICOM-SEG"):
        read_dicom_seg(test_data / LIVER / "dicom" / "ct" / "01.dcm", liver)

    shifted = pydicom.dcmread(seg_path)
    shifted.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient[2] += 5
    shifted.save_as(tmp_path / "shifted.dcm")
    with pytest.raises(DicomInputError, match=r"frame 1 is at .* but its source 03\.dcm is at"):
        read_dicom_seg(tmp_path / "shifted.dcm", liver)
