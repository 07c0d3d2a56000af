"""Write a predicted binary mask as a DICOM-SEG of its source series, and decode a DICOM-SEG back to a mask.

A DICOM-SEG is how a segmentation goes back to a PACS or a viewer next to the images it was made from: every frame
references its source slice by SOP Instance UID, so the mask stays attached to the right slices whatever the
viewer's own geometry handling. Masks use the (x, y, z) layout of ``medtransfer.data.dicom.read_series``, whose z
index k is ``series.slices[k]``; that correspondence, not geometry arithmetic, is what maps z to source slices.
"""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from medtransfer import __version__
from medtransfer.data.dicom import DicomInputError, SeriesInfo
from medtransfer.atomic import atomic_write

logger = logging.getLogger(__name__)

# SEG series get a fixed, high series number so viewers list them after the acquired series.
_SEG_SERIES_NUMBER = 9001
# A SEG frame and its source slice are the same plane if their origins are closer than this fraction of a pixel.
_SAME_PLANE_PIXELS = 0.1
# Type 2 (required, may be empty) Patient/Study attributes that highdicom copies from the first source image; some
# exports (e.g. the artificial HippoCrop series) omit them, and highdicom then fails with an AttributeError.
_REQUIRED_EMPTY_OK = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
)
# Coding schemes a segment code may use: SNOMED CT (what DICOM CID 7150/7151 use) and DICOM's own.
CODE_SCHEMES = ("SCT", "DCM")
# DICOM CID 7150 "Anatomical Structure" (the category the issue and dcmqi/TotalSegmentator use for organs).
ANATOMICAL_STRUCTURE = Code("123037004", "SCT", "Anatomical Structure")
# For a model whose data manifest gives no code: "Tissue" is true of any foreground and claims no organ.
GENERIC_CATEGORY = Code("85756007", "SCT", "Tissue")
GENERIC_TYPE = Code("85756007", "SCT", "Tissue")


class SegmentCodeError(ValueError):
    """A segment code that is not SCHEME:VALUE:MEANING with a known scheme."""


def parse_code(text, where: str = "segment code") -> Code:
    """``"SCT:10200004:Liver"`` (or a ``{"scheme", "value", "meaning"}`` dict) -> a pydicom Code."""
    if isinstance(text, Code):
        return text
    if isinstance(text, dict):
        parts = [text.get("scheme"), text.get("value"), text.get("meaning")]
    else:
        parts = str(text).split(":", 2)
    if len(parts) != 3 or not all(isinstance(p, str) and p.strip() for p in parts):
        raise SegmentCodeError(f"{where} {text!r}: expected SCHEME:VALUE:MEANING, e.g. SCT:10200004:Liver")
    scheme, value, meaning = (p.strip() for p in parts)
    if scheme not in CODE_SCHEMES:
        raise SegmentCodeError(
            f"{where} {text!r}: unknown coding scheme {scheme!r}; use one of {', '.join(CODE_SCHEMES)} "
            f"(SCT = SNOMED CT)"
        )
    if scheme == "SCT" and not value.isdigit():
        raise SegmentCodeError(f"{where} {text!r}: a SNOMED CT code value is a number, got {value!r}")
    return Code(value, scheme, meaning[:64])


def code_dict(code: Code) -> dict:
    return {"scheme": code.scheme_designator, "value": code.value, "meaning": code.meaning}


def _source_datasets(series: SeriesInfo) -> list[Dataset]:
    """Source headers in z order, with the UIDs SeriesInfo resolved written back in.

    Pixel data are not read: highdicom only needs the headers to copy patient/study data and build references.
    De-identified files may have blank UIDs; SeriesInfo holds their file-meta copies or deterministic placeholders,
    and writing those back keeps the SEG valid and consistent with ``read_dicom_seg``'s matching. Missing Type 2
    patient/study attributes are added empty, which is what the standard says an unknown value is.
    """
    datasets = []
    for item in series.slices:
        ds = pydicom.dcmread(item.path, stop_before_pixels=True)
        for keyword in _REQUIRED_EMPTY_OK:
            if keyword not in ds:
                setattr(ds, keyword, "")
        ds.SOPInstanceUID = item.sop_instance_uid
        ds.SOPClassUID = item.sop_class_uid
        ds.SeriesInstanceUID = series.uid
        ds.StudyInstanceUID = series.study_uid
        ds.FrameOfReferenceUID = series.frame_of_reference_uid
        datasets.append(ds)
    return datasets


def write_dicom_seg(
    mask_xyz: np.ndarray,
    series: SeriesInfo,
    output_path: str | Path,
    segment_label: str = "foreground",
    algorithm_name: str = "medtransfer",
    algorithm_version: str = __version__,
    description: str | None = None,
    segmented_property_category: Code = codes.SCT.Tissue,
    segmented_property_type: Code = codes.SCT.Organ,
) -> Path:
    """Write ``mask_xyz`` (binary, shaped like ``read_series``' array for ``series``) as a one-segment DICOM-SEG.

    The SEG joins the source study, references every source slice and its frame of reference, and identifies the
    algorithm (AUTOMATIC, family Artificial Intelligence). Empty slices are omitted from the file, as highdicom does
    by default; ``read_dicom_seg`` restores them as zeros. The file is written atomically, so a crash never leaves
    a truncated SEG that a PACS would ingest.
    """
    mask = np.asarray(mask_xyz)
    expected = (series.columns, series.rows, len(series.slices))
    if mask.shape != expected:
        raise ValueError(
            f"mask shape {mask.shape} does not match series {series.uid} in {series.folder}: expected (x, y, z) = "
            f"{expected}, the shape read_series returns"
        )
    if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
        raise ValueError(f"mask for {output_path} is not binary: values {np.unique(mask)[:10].tolist()}")
    if series.placeholder_uids:
        logger.warning(
            "%s: the source series has blank %s; the DICOM-SEG references placeholder UIDs instead",
            output_path, ", ".join(series.placeholder_uids),
        )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment_label,
        segmented_property_category=segmented_property_category,
        segmented_property_type=segmented_property_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm_name, family=codes.DCM.ArtificialIntelligence, version=algorithm_version
        ),
    )
    sources = _source_datasets(series)
    description = description or f"{algorithm_name} {segment_label}"
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask.astype(bool).transpose(2, 1, 0),  # highdicom wants (frames, rows, columns)
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=_SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medtransfer",
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        device_serial_number="0",
        series_description=description,
        content_description=description,
        # An empty SpecificCharacterSet means the default repertoire; highdicom wants it absent instead.
        specific_character_set=sources[0].get("SpecificCharacterSet") or None,
    )
    output_path = Path(output_path)
    atomic_write(output_path, lambda stream: seg.save_as(stream, enforce_file_format=True))
    return output_path


def _frame_sources(frame: Dataset) -> list[str]:
    return [
        reference.ReferencedSOPInstanceUID
        for derivation in frame.get("DerivationImageSequence", [])
        for reference in derivation.get("SourceImageSequence", [])
    ]


def _check_alignment(seg: hd.seg.Segmentation, seg_path: Path, series: SeriesInfo) -> None:
    """Refuse a SEG that is not on the series' slices: another frame of reference, grid size or orientation,
    or frames whose stored position differs from the slice they reference.

    highdicom refuses to index a SEG by source instance when it lacks SpatialLocationsPreserved (dcmqi's SEGs,
    the shipped liver one included, omit it) unless told to ignore spatial locations; these checks are what make
    ignoring it safe.
    """
    where = f"{seg_path}: DICOM-SEG vs series {series.uid} in {series.folder}"
    if seg.get("FrameOfReferenceUID", "") != series.frame_of_reference_uid:
        raise DicomInputError(
            f"{where}: different FrameOfReferenceUID ({seg.get('FrameOfReferenceUID')} vs "
            f"{series.frame_of_reference_uid})"
        )
    if (seg.Rows, seg.Columns) != (series.rows, series.columns):
        raise DicomInputError(
            f"{where}: frames are {seg.Rows}x{seg.Columns}, source slices {series.rows}x{series.columns}"
        )
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else Dataset()
    if "PlaneOrientationSequence" in shared:
        orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
        if not np.allclose(orientation, series.orientation, atol=1e-4):
            raise DicomInputError(f"{where}: orientation {orientation} differs from {list(series.orientation)}")
    by_uid = {s.sop_instance_uid: s for s in series.slices}
    tolerance = _SAME_PLANE_PIXELS * min(series.slices[0].pixel_spacing)
    matched = 0
    for number, frame in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        for uid in _frame_sources(frame):
            source = by_uid.get(uid)
            if source is None:
                continue
            matched += 1
            if "PlanePositionSequence" in frame:
                position = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
                if np.linalg.norm(position - source.position) > tolerance:
                    raise DicomInputError(
                        f"{where}: frame {number} is at {position.tolist()} but its source {source.path.name} "
                        f"is at {list(source.position)}"
                    )
    if not matched:
        raise DicomInputError(f"{where}: no frame references any of the series' {len(by_uid)} SOP instances")


def read_dicom_seg(seg_path: str | Path, series: SeriesInfo, segment_number: int | None = None) -> np.ndarray:
    """Decode one segment of a DICOM-SEG to a uint8 {0, 1} (x, y, z) mask on ``series``' grid.

    Frames are matched to slices through their referenced SOP Instance UIDs; slices without a frame are zeros.
    ``segment_number`` may be omitted when the SEG has one segment; choosing among several silently could
    return the wrong structure. Fractional segmentations are thresholded at 0.5.
    """
    seg_path = Path(seg_path)
    try:
        seg = hd.seg.segread(seg_path)
    except (OSError, ValueError, InvalidDicomError) as err:  # ValueError: a DICOM file that is not a SEG
        raise DicomInputError(f"{seg_path}: not a readable DICOM-SEG ({type(err).__name__}: {err})") from err
    numbers = list(seg.segment_numbers)
    if segment_number is None:
        if len(numbers) != 1:
            listing = ", ".join(f"{n} ({seg.get_segment_description(n).segment_label})" for n in numbers)
            raise DicomInputError(f"{seg_path}: has {len(numbers)} segments, choose a segment_number: {listing}")
        segment_number = numbers[0]
    elif segment_number not in numbers:
        raise DicomInputError(f"{seg_path}: no segment {segment_number}; segments are {numbers}")
    _check_alignment(seg, seg_path, series)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(series.sop_instance_uids),
        segment_numbers=[segment_number],
        ignore_spatial_locations=True,  # checked by _check_alignment
        assert_missing_frames_are_empty=True,  # slices the SEG omits (empty ones) come back as zeros
    )
    return (pixels[..., 0] >= 0.5).astype(np.uint8).transpose(2, 1, 0)  # (frames, rows, columns) -> (x, y, z)
