"""Read a DICOM image series into an (x, y, z) array with a NIfTI-convention (RAS) affine.

Clinical data arrives as folders of files: several series mixed together, SEG/SR/presentation-state objects next
to the images, de-identified headers with blanked UIDs, a slice lost in transfer. Reading such a folder naively
gives a volume that looks fine and has the wrong geometry. So this module finds the series, checks its geometry
before reading it, and every error names the folder or files involved and says what to do about it.

Conventions: ``read_series`` returns the array in (x, y, z) = (column, row, slice) order, which is what nibabel
gives for a NIfTI file written by SimpleITK/ITK from the same series, and ``affine`` maps those indices to RAS
millimetres (ITK's LPS with the first two rows negated). Slices are ordered by increasing position along the slice
normal (row direction x column direction), the order ITK/GDCM use, so the affine's third column is that normal.
"""

from __future__ import annotations

from medtransfer.errors import MedtransferError

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

logger = logging.getLogger(__name__)

# Used only when the SOP class is one pydicom does not know (private or retired): these modalities never hold
# slices of an image volume.
_NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "SR", "PR", "KO", "DOC", "REG", "FID", "RWV", "AU", "ECG"}
)
# Slices closer than this along the normal are the same slice (DS values carry ~1e-5 mm of rounding).
_SAME_POSITION_MM = 1e-3
# Orientation cosines that differ by more than this are a different orientation, not rounding.
_ORIENTATION_TOLERANCE = 1e-4
# A step more than this many times the median step means slices are missing.
_GAP_FACTOR = 1.5
# Spacings whose spread exceeds this fraction of the median are uneven.
_SPACING_SPREAD = 0.01
# Slices shifted sideways by more than this fraction of a pixel are sheared (gantry tilt), which ITK ignores.
_SHEAR_PIXELS = 0.1


class DicomInputError(MedtransferError, ValueError):
    """A DICOM folder or file cannot be turned into a volume; the message names the path and the problem."""


class SeveralSeriesError(DicomInputError):
    """A folder holds several image series and none was chosen; `series_uids` lists them."""

    def __init__(self, message: str, series_uids: list[str]) -> None:
        super().__init__(message)
        self.series_uids = list(series_uids)


class SliceSpacingError(DicomInputError):
    """A series has missing slices or uneven slice spacing; `allow_uneven=True` reads it anyway."""


@dataclass(frozen=True)
class DicomSlice:
    """The header facts of one slice file that ordering, geometry checks and DICOM-SEG references need."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    position: tuple[float, float, float]  # ImagePositionPatient, LPS mm
    orientation: tuple[float, ...]  # ImageOrientationPatient: row cosines then column cosines
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm


@dataclass(frozen=True)
class SeriesInfo:
    """One image series, its slices sorted by increasing position along the slice normal.

    ``placeholder_uids`` names the identifying attributes (e.g. StudyInstanceUID) that the files leave blank, as
    de-identification tools often do; those fields then hold a UID derived deterministically from the series
    content, so the same files always get the same one and a DICOM-SEG written for them stays valid.
    """

    uid: str
    folder: Path
    modality: str
    description: str
    study_uid: str
    frame_of_reference_uid: str
    slices: tuple[DicomSlice, ...]
    placeholder_uids: tuple[str, ...] = field(default=())

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(s.path for s in self.slices)

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        return tuple(s.sop_instance_uid for s in self.slices)

    @property
    def rows(self) -> int:
        """Rows of the first slice; ``check_geometry`` rejects series whose slices differ."""
        return self.slices[0].rows

    @property
    def columns(self) -> int:
        """Columns of the first slice; ``check_geometry`` rejects series whose slices differ."""
        return self.slices[0].columns

    @property
    def orientation(self) -> tuple[float, ...]:
        return self.slices[0].orientation

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal (row cosines x column cosines) in LPS, the direction slices are sorted along."""
        return _normal(self.orientation)

    @property
    def slice_positions(self) -> tuple[float, ...]:
        """Each slice's ImagePositionPatient projected on the normal, in mm; increasing."""
        normal = self.normal
        return tuple(float(np.dot(s.position, normal)) for s in self.slices)


@dataclass
class _Scan:
    """What a folder scan found: image headers grouped by series, plus the files that were set aside."""

    images: dict[str, list[tuple[Path, Dataset]]]
    not_dicom: list[str]
    non_image: list[str]
    file_count: int


def _normal(orientation: Sequence[float]) -> np.ndarray:
    normal = np.cross(np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:6], dtype=float))
    return normal / np.linalg.norm(normal)


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def _sop_class(ds: Dataset) -> str:
    """SOPClassUID, or the Part-10 file meta copy when de-identification blanked the dataset's own."""
    return _text(ds, "SOPClassUID") or _text(getattr(ds, "file_meta", Dataset()), "MediaStorageSOPClassUID")


def _sop_instance(ds: Dataset) -> str:
    """SOPInstanceUID, or the file meta copy, which the standard requires to be identical."""
    return _text(ds, "SOPInstanceUID") or _text(getattr(ds, "file_meta", Dataset()), "MediaStorageSOPInstanceUID")


def _non_image_reason(ds: Dataset) -> str | None:
    """Why a DICOM object is not a slice of an image volume (SEG, SR, RTSTRUCT, ...), or None if it is one."""
    sop_class = _sop_class(ds)
    modality = _text(ds, "Modality") or "no Modality"
    name = UID(sop_class).name if sop_class else ""
    if name and name != sop_class:  # a SOP class pydicom knows: its name says whether it is an image
        return None if "Image Storage" in name else f"{name}, {modality}"
    if modality in _NON_IMAGE_MODALITIES or "Rows" not in ds or "Columns" not in ds:
        return f"SOP class {sop_class or 'missing'}, {modality}"
    return None


def _series_key(ds: Dataset) -> str:
    """SeriesInstanceUID, or a deterministic placeholder from the attributes a blanked series still shares."""
    uid = _text(ds, "SeriesInstanceUID")
    if uid:
        return uid
    shared = ("StudyInstanceUID", "FrameOfReferenceUID", "Modality", "SeriesNumber", "SeriesDescription")
    return generate_uid(entropy_srcs=["SeriesInstanceUID", *(_text(ds, k) for k in shared)])


def _scan(folder: str | Path) -> _Scan:
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomInputError(f"{folder}: not a folder (expected a folder of DICOM files)")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise DicomInputError(f"{folder}: the folder is empty (no files found, searched recursively)")
    scan = _Scan(images=defaultdict(list), not_dicom=[], non_image=[], file_count=len(files))
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=False)
            if len(ds) == 0:
                scan.not_dicom.append(f"{path} (no data elements: truncated or corrupt)")
                continue
            reason = _non_image_reason(ds)
            key = None if reason else _series_key(ds)
        except Exception as err:  # pydicom raises many types on corrupt input; all mean "cannot use this file"
            scan.not_dicom.append(f"{path} ({type(err).__name__}: {err})")
            continue
        if reason:
            scan.non_image.append(f"{path} ({reason})")
        else:
            scan.images[key].append((path, ds))
    if scan.not_dicom:
        logger.warning(
            "%s: %d file(s) skipped, not readable as DICOM:\n  %s",
            folder, len(scan.not_dicom), "\n  ".join(scan.not_dicom),
        )
    if scan.non_image:
        logger.warning(
            "%s: %d non-image DICOM object(s) excluded:\n  %s",
            folder, len(scan.non_image), "\n  ".join(scan.non_image),
        )
    return scan


def find_series(folder: str | Path) -> dict[str, list[Path]]:
    """Image series in ``folder`` (searched recursively): SeriesInstanceUID -> its files, from headers only.

    Files that are not DICOM and non-image objects (SEG, SR, RTSTRUCT, ...) are left out with a logged warning
    that names them, because stray files in an export folder are normal and must not stop the read.
    Series whose files have a blank SeriesInstanceUID are keyed by a deterministic placeholder UID.
    """
    return {uid: [path for path, _ in members] for uid, members in _scan(folder).images.items()}


def _describe(uid: str, members: list[tuple[Path, Dataset]]) -> str:
    first = members[0][1]
    return (
        f"  series_uid={uid}  description={_text(first, 'SeriesDescription')!r}  "
        f"modality={_text(first, 'Modality') or '?'}  files={len(members)}  (e.g. {members[0][0].name})"
    )


def _slice(path: Path, ds: Dataset) -> DicomSlice:
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if k not in ds]
    if missing:
        raise DicomInputError(f"{path}: lacks {', '.join(missing)}, so it cannot be placed in a volume")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomInputError(
            f"{path}: a multi-frame image ({frames} frames); only series of single-frame slices are supported"
        )
    sop_instance_uid = _sop_instance(ds)
    if not sop_instance_uid:
        raise DicomInputError(f"{path}: has no SOPInstanceUID (nor MediaStorageSOPInstanceUID in its file meta)")
    try:
        return DicomSlice(
            path=path,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=_sop_class(ds),
            position=tuple(float(v) for v in ds.ImagePositionPatient),
            orientation=tuple(float(v) for v in ds.ImageOrientationPatient),
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            pixel_spacing=tuple(float(v) for v in ds.PixelSpacing),
        )
    except (TypeError, ValueError) as err:
        raise DicomInputError(f"{path}: malformed geometry attributes ({err})") from err


def _series_info(folder: Path, uid: str, members: list[tuple[Path, Dataset]]) -> SeriesInfo:
    slices = [_slice(path, ds) for path, ds in members]
    normal = _normal(slices[0].orientation)
    slices.sort(key=lambda s: float(np.dot(s.position, normal)))  # stable: equal positions keep path order
    first = members[0][1]
    placeholders = []
    if not _text(first, "SeriesInstanceUID"):
        placeholders.append("SeriesInstanceUID")
    study_uid = _text(first, "StudyInstanceUID")
    if not study_uid:
        placeholders.append("StudyInstanceUID")
        study_uid = generate_uid(entropy_srcs=["StudyInstanceUID", uid])
    frame_of_reference = _text(first, "FrameOfReferenceUID")
    if not frame_of_reference:
        placeholders.append("FrameOfReferenceUID")
        frame_of_reference = generate_uid(entropy_srcs=["FrameOfReferenceUID", uid])
    if placeholders:
        logger.warning(
            "%s: series %s has blank %s (de-identified?); using placeholder UIDs derived from the series",
            folder, uid, ", ".join(placeholders),
        )
    return SeriesInfo(
        uid=uid,
        folder=folder,
        modality=_text(first, "Modality"),
        description=_text(first, "SeriesDescription"),
        study_uid=study_uid,
        frame_of_reference_uid=frame_of_reference,
        slices=tuple(slices),
        placeholder_uids=tuple(placeholders),
    )


def select_series(folder: str | Path, series_uid: str | None = None) -> SeriesInfo:
    """The one image series in ``folder``, or the one named by ``series_uid``.

    Guessing among several series (T1 vs FLAIR, a localiser next to the CT) would silently feed the wrong images
    to a model, so several series without a choice is an error that lists them all.
    """
    folder = Path(folder)
    scan = _scan(folder)
    listing = "\n".join(_describe(uid, members) for uid, members in scan.images.items())
    if not scan.images:
        raise DicomInputError(
            f"{folder}: no DICOM image series found among {scan.file_count} file(s) "
            f"({len(scan.not_dicom)} not readable as DICOM, {len(scan.non_image)} non-image DICOM objects)"
        )
    if series_uid is None:
        if len(scan.images) > 1:
            raise SeveralSeriesError(
                f"{folder}: holds {len(scan.images)} image series; choose one by passing its series_uid:\n{listing}",
                list(scan.images),
            )
        series_uid = next(iter(scan.images))
    elif series_uid not in scan.images:
        raise DicomInputError(f"{folder}: no image series with series_uid={series_uid}; found:\n{listing}")
    return _series_info(folder, series_uid, scan.images[series_uid])


def check_geometry(series: SeriesInfo, allow_uneven: bool = False) -> list[str]:
    """Raise DicomInputError unless the slices form a regular grid; return warnings for tolerated problems.

    ITK builds the volume from the first slice's orientation and one slice spacing, so a duplicated slice, a
    missing one, mixed orientations or sizes, or a sheared stack (gantry tilt) would give a volume whose voxels are
    not where the affine says. Uneven spacing and gaps are errors unless ``allow_uneven`` downgrades them to
    warnings, for callers who accept an averaged spacing.
    """
    where = f"{series.folder}: series {series.uid}"
    slices = series.slices
    shapes = defaultdict(list)
    for s in slices:
        shapes[(s.rows, s.columns)].append(s.path.name)
    if len(shapes) > 1:
        detail = "; ".join(f"{r}x{c} in {len(n)} file(s) e.g. {n[0]}" for (r, c), n in shapes.items())
        raise DicomInputError(f"{where}: slices have different sizes (rows x columns): {detail}")
    odd = [
        s.path.name
        for s in slices
        if not np.allclose(s.orientation, series.orientation, atol=_ORIENTATION_TOLERANCE)
    ]
    if odd:
        raise DicomInputError(
            f"{where}: mixed slice orientations; {len(odd)} file(s) differ from {slices[0].path.name} "
            f"{list(series.orientation)}: {', '.join(odd[:10])}"
        )
    if len(slices) == 1:
        return [f"{where}: a single slice; the slice spacing cannot be derived from positions"]

    positions = np.asarray(series.slice_positions)
    steps = np.diff(positions)
    duplicates = [
        f"{slices[i].path.name} and {slices[i + 1].path.name} at {positions[i]:.3f} mm"
        for i in np.flatnonzero(steps < _SAME_POSITION_MM)
    ]
    if duplicates:
        raise DicomInputError(f"{where}: duplicated slice positions: {'; '.join(duplicates)}")

    points = np.asarray([s.position for s in slices])
    row, column = np.asarray(series.orientation[:3]), np.asarray(series.orientation[3:6])
    sideways = max(np.ptp(points @ row), np.ptp(points @ column))
    if sideways > _SHEAR_PIXELS * min(slices[0].pixel_spacing):
        raise DicomInputError(
            f"{where}: slice positions drift {sideways:.3f} mm within the image plane (sheared stack, e.g. gantry "
            f"tilt); resample it to an orthogonal grid first"
        )

    median = float(np.median(steps))
    problems = [
        f"gap of {steps[i]:.3f} mm (median spacing {median:.3f} mm) between {positions[i]:.3f} mm "
        f"({slices[i].path.name}) and {positions[i + 1]:.3f} mm ({slices[i + 1].path.name}), slice(s) probably missing"
        for i in np.flatnonzero(steps > _GAP_FACTOR * median)
    ]
    if not problems and (steps.max() - steps.min()) > _SPACING_SPREAD * median:
        low, high = int(np.argmin(steps)), int(np.argmax(steps))
        problems.append(
            f"uneven slice spacing from {steps[low]:.3f} mm (after {slices[low].path.name}) to {steps[high]:.3f} mm "
            f"(after {slices[high].path.name})"
        )
    if not problems:
        return []
    message = f"{where}: {'; '.join(problems)}"
    if not allow_uneven:
        raise SliceSpacingError(
            f"{message}. Pass allow_uneven=True to read it anyway with one averaged slice spacing "
            f"(slice positions in the volume are then approximate)"
        )
    return [message]


def _resolve(folder_or_info: str | Path | SeriesInfo, series_uid: str | None) -> SeriesInfo:
    if isinstance(folder_or_info, SeriesInfo):
        if series_uid not in (None, folder_or_info.uid):
            raise DicomInputError(
                f"{folder_or_info.folder}: series_uid={series_uid} given with a SeriesInfo for {folder_or_info.uid}"
            )
        return folder_or_info
    return select_series(folder_or_info, series_uid)


def _read_image(series: SeriesInfo, allow_uneven: bool) -> tuple[sitk.Image, list[str]]:
    warnings = check_geometry(series, allow_uneven)
    for warning in warnings:
        logger.warning(warning)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise DicomInputError(f"{series.folder}: SimpleITK could not read series {series.uid}: {err}") from err
    return image, warnings


def read_series_sitk(
    folder_or_info: str | Path | SeriesInfo, series_uid: str | None = None, allow_uneven: bool = False
) -> sitk.Image:
    """The checked series as a SimpleITK image (LPS geometry, rescale slope/intercept applied)."""
    return _read_image(_resolve(folder_or_info, series_uid), allow_uneven)[0]


def read_series(
    folder_or_info: str | Path | SeriesInfo, series_uid: str | None = None, allow_uneven: bool = False
) -> tuple[np.ndarray, dict]:
    """The checked series as an (x, y, z) array plus metadata.

    Values are those SimpleITK gives (rescale slope/intercept applied, e.g. CT in HU). Metadata keys:
    ``affine`` (4x4, index -> RAS mm, as nibabel reports for a NIfTI of the same volume), ``spacing`` (x, y, z mm),
    ``origin`` and ``direction`` (ITK's, in LPS), ``series`` (the SeriesInfo, whose slice k is z index k) and
    ``warnings`` (tolerated geometry problems).
    """
    series = _resolve(folder_or_info, series_uid)
    image, warnings = _read_image(series, allow_uneven)
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # ITK's numpy view is (z, y, x)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    origin = np.asarray(image.GetOrigin(), dtype=float)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing  # scales column j (axis j) by spacing[j]
    affine[:3, 3] = origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS
    meta = {
        "affine": affine,
        "spacing": spacing,
        "origin": origin,
        "direction": direction,
        "series": series,
        "warnings": warnings,
    }
    return array, meta
