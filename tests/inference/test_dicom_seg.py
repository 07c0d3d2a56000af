"""DICOM-SEG decoding against the shipped dcmqi liver SEG, and write/read round trips on real CT series."""

import logging

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.sr.coding import Code

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


# --- segment codes and the model's identity -------------------------------------------------------------------


def test_segment_codes_parse_and_unknown_schemes_are_named():
    from medtransfer.inference.dicom_seg import SegmentCodeError, parse_code

    assert parse_code("SCT:10200004:Liver") == Code("10200004", "SCT", "Liver")
    assert parse_code({"scheme": "DCM", "value": "113076", "meaning": "Segmentation"}).scheme_designator == "DCM"
    with pytest.raises(SegmentCodeError, match=r"'FMA:7197:Liver': unknown coding scheme 'FMA'"):
        parse_code("FMA:7197:Liver")
    with pytest.raises(SegmentCodeError, match="expected SCHEME:VALUE:MEANING"):
        parse_code("Liver")
    with pytest.raises(SegmentCodeError, match="a SNOMED CT code value is a number"):
        parse_code("SCT:liver:Liver")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, test_data):
    from tests.inference.test_bundle_loading import make_bundle

    return make_bundle(tmp_path_factory.mktemp("codes"), test_data)


def _segment_of(path):
    seg = hd.seg.segread(path)
    return seg, seg.get_segment_description(1)


def test_manifest_codes_travel_into_the_bundle_and_the_dicom_seg(bundle, test_data, tmp_path):
    import json

    from medtransfer.atomic import sha256_of
    from medtransfer.inference.segment import segment

    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    clinical = meta["clinical"]
    assert clinical["segment"]["type"] == {"scheme": "SCT", "value": "5366008", "meaning": "Hippocampus"}
    assert clinical["segment"]["category"]["value"] == "123037004"
    digest = sha256_of(bundle / "models" / "model.pt")
    assert clinical["algorithm"] == {"name": "medtransfer binary_seg_3d msd_hippocampus", "version": "0.1.0",
                                     "weights_sha256": digest}

    ct = test_data / LIVER / "dicom" / "ct"
    result = segment(bundle, ct, tmp_path / "manifest_code", progress=False)[0]
    assert result.ok, result.error
    seg, description = _segment_of(result.output_dicom_seg)
    assert description.segmented_property_type == Code("5366008", "SCT", "Hippocampus")
    assert description.segmented_property_category == Code("123037004", "SCT", "Anatomical Structure")
    algorithm = description.algorithm_identification[0]
    assert algorithm.AlgorithmName == "medtransfer binary_seg_3d msd_hippocampus"
    assert algorithm.AlgorithmVersion == f"0.1.0 sha256:{digest[:16]}"
    assert not any("generic" in w for w in result.warnings)

    override = segment(bundle, ct, tmp_path / "override", progress=False, segment_code="SCT:10200004:Liver")[0]
    _, description = _segment_of(override.output_dicom_seg)
    assert description.segmented_property_type == Code("10200004", "SCT", "Liver")
    assert description.segmented_property_category == Code("123037004", "SCT", "Anatomical Structure")
    assert description.segment_label == "hippocampus"

    from medtransfer.inference.segment import SegmentError

    with pytest.raises(SegmentError, match="--segment-code 'RADLEX:123:Liver': unknown coding scheme 'RADLEX'"):
        segment(bundle, ct, tmp_path / "bad", progress=False, segment_code="RADLEX:123:Liver")
    assert not (tmp_path / "bad").exists()
    _dciodvfy(override.output_dicom_seg)


def test_without_codes_a_generic_code_is_used_with_a_warning(bundle, test_data, tmp_path):
    import json
    import shutil

    from medtransfer.inference.segment import segment

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    meta_path = copy / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["clinical"]["segment"]["type"], meta["clinical"]["segment"]["category"]
    meta_path.write_text(json.dumps(meta))
    result = segment(copy, test_data / LIVER / "dicom" / "ct", tmp_path / "out", progress=False)[0]
    assert result.ok, result.error
    _, description = _segment_of(result.output_dicom_seg)
    assert description.segmented_property_type == Code("85756007", "SCT", "Tissue")
    assert any("generic SCT 85756007 'Tissue'" in w and "--segment-code" in w for w in result.warnings)


def _dciodvfy(path):
    """dicom3tools' validator, when installed: no errors (warnings about optional attributes are allowed)."""
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        return
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)
