"""`medtransfer segment`: binary masks for new scans, in each scan's own geometry.

Inputs are NIfTI (or other single-file) images and folders of DICOM series. Each scan goes through the model's
own preprocessing (medtransfer's chain: load, RAS orientation, resampling to the training spacing, percentile
normalisation), sliding-window inference (bounded memory for any volume size), argmax, and the inverse of the
preprocessing (nearest neighbour), so the mask has the input's shape and affine. DICOM series also get a
DICOM-SEG that references the source slices. One bad scan is reported and the others are still segmented;
existing outputs are never overwritten unless asked.
"""

from __future__ import annotations

from medtransfer.errors import MedtransferError

import copy
import csv
import errno
import io
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd, LoadImaged
from tqdm import tqdm

from medtransfer.atomic import atomic_write
from medtransfer.data.dicom import (
    DicomInputError,
    SeriesInfo,
    SeveralSeriesError,
    SliceSpacingError,
    find_series,
    select_series,
)
from medtransfer.data.readers import DicomSeriesReader
from medtransfer.inference.bundle_loading import SegmentationModel, load_model
from medtransfer.inference.dicom_seg import (
    GENERIC_CATEGORY, GENERIC_TYPE, SegmentCodeError, parse_code, write_dicom_seg,
)
from medtransfer.inference.inputs import IMAGE_SUFFIXES
from medtransfer.inference.model_info import CLINICAL_KEY
from medtransfer.inference.postprocess import PostprocessError, apply_postprocessing, check_postprocessing
from medtransfer.networks.config import network_input_channels
from medtransfer.inference.inputs import is_dicom_file as _is_dicom

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.csv"
SUMMARY_COLUMNS = (
    "scan", "input", "output_nifti", "output_dicom_seg", "volume_ml", "n_voxels", "seconds", "status", "error",
    "warnings",
)
ALL_SERIES = "all"
# Loggers whose warnings (skipped files, excluded SR/RTSTRUCT objects, tolerated uneven spacing, placeholder UIDs)
# belong in a scan's summary row, not only on the console.
_WARNING_LOGGERS = ("medtransfer.data.dicom", "medtransfer.inference.dicom_seg")


class SegmentError(MedtransferError, RuntimeError):
    """`segment` cannot start (e.g. it would overwrite outputs); per-scan problems become failed rows instead."""


class DeviceError(SegmentError):
    """The requested torch device does not exist or is not available on this machine."""


class EnsembleError(SegmentError):
    """Models that cannot be averaged (other architecture, channels, preprocessing) or TTA a model forbids."""


# --- device, models, probabilities (TTA and ensembles) ------------------------------------------------------


def resolve_device(requested: str | torch.device | None = "auto") -> torch.device:
    """``auto``: CUDA, then MPS, then CPU. A named device must exist here, else DeviceError (no traceback)."""
    if requested is None or str(requested) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as error:
        raise DeviceError(f"unknown device {str(requested)!r} ({error}); use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(
                f"device {str(requested)!r}: CUDA is not available on this machine; use --device auto or cpu"
            )
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device {str(requested)!r}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"device {str(requested)!r}: Apple MPS is not available on this machine")
    elif device.type != "cpu":
        raise DeviceError(f"device {str(requested)!r}: not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


def clinical(model: SegmentationModel) -> dict:
    """The model's ``clinical`` metadata (post-processing, AMP / flip flags, codes, identity); {} if it has none."""
    return dict((model.metadata or {}).get(CLINICAL_KEY) or {})


def _autocast(model: SegmentationModel):
    """CUDA autocast (AMP) when the model is on a GPU and its metadata allows it; otherwise a no-op."""
    enabled = model.device.type == "cuda" and clinical(model).get("amp") is True
    return torch.autocast(device_type="cuda", dtype=torch.float16, enabled=enabled) if enabled else _nothing()


@contextmanager
def _nothing():
    yield


def _target_spacing(model: SegmentationModel):
    for transform in getattr(model.preprocessing, "transforms", []):
        spacing = getattr(getattr(transform, "spacing_transform", None), "pixdim", None)
        if spacing is not None:
            return [round(float(s), 6) for s in np.atleast_1d(spacing)]
    return None


def check_ensemble(models: Sequence[SegmentationModel]) -> None:
    """Models whose probabilities can be averaged: same dimensions, channels, parameter shapes and preprocessing."""
    first = models[0]
    shapes = {k: tuple(v.shape) for k, v in first.network.state_dict().items()}
    for other in models[1:]:
        where = f"ensemble: {other.source} vs {first.source}"
        if other.spatial_dims != first.spatial_dims:
            raise EnsembleError(f"{where}: {other.spatial_dims}D vs {first.spatial_dims}D models")
        channels = (network_input_channels(other.network), network_input_channels(first.network))
        if channels[0] != channels[1]:
            raise EnsembleError(f"{where}: {channels[0]} input channel(s) vs {channels[1]}")
        if type(other.network) is not type(first.network):
            raise EnsembleError(
                f"{where}: different architectures ({type(other.network).__name__} vs {type(first.network).__name__})"
            )
        other_shapes = {k: tuple(v.shape) for k, v in other.network.state_dict().items()}
        if other_shapes != shapes:
            differing = sorted(set(shapes) ^ set(other_shapes)) or [k for k in shapes if shapes[k] != other_shapes[k]]
            raise EnsembleError(
                f"{where}: different architectures (parameters differ, e.g. {differing[0]}: "
                f"{other_shapes.get(differing[0])} vs {shapes.get(differing[0])})"
            )
        if _target_spacing(other) != _target_spacing(first):
            raise EnsembleError(
                f"{where}: trained at different spacings ({_target_spacing(other)} vs {_target_spacing(first)}), "
                f"so their outputs are on different grids"
            )


def flip_axes(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every combination of flipped spatial axes (nnU-Net's mirroring): 4 in 2D, 8 in 3D, identity first."""
    from itertools import combinations

    axes = range(2, 2 + spatial_dims)  # tensor axes of (1, C, *spatial)
    return [combo for size in range(spatial_dims + 1) for combo in combinations(axes, size)]


def check_tta(models: Sequence[SegmentationModel]) -> None:
    for model in models:
        if clinical(model).get("lateralised_anatomy"):
            raise EnsembleError(
                f"{model.source}: --tta flips the image, but this model's metadata marks its anatomy as lateralised "
                f"(left and right differ: clinical.lateralised_anatomy); run without --tta"
            )


def probabilities(models: Sequence[SegmentationModel], image: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Softmax probabilities of a (1, C, *spatial) image averaged over ``models`` and, with ``tta``, over flips."""
    total = None
    count = 0
    for model in models:
        for axes in flip_axes(model.spatial_dims) if tta else [()]:
            flipped = image.flip(axes) if axes else image
            with _autocast(model):
                logits = model.predict(flipped)
            probs = torch.softmax(logits.float(), dim=1)
            probs = probs.flip(axes) if axes else probs
            total = probs if total is None else total + probs
            count += 1
            del logits
    return total / count


# --- segment codes and the model's identity in DICOM-SEG ----------------------------------------------------


def segment_coding(model: SegmentationModel, override: str | None = None, category: str | None = None) -> dict:
    """DICOM-SEG label, category and type codes and algorithm identity for ``model``.

    Type: ``override`` (``--segment-code SCT:10200004:Liver``), else the model's metadata (from the data manifest's
    ``label_codes``), else a generic "Tissue" code (``generic`` true: the caller warns). Category: ``category``,
    else the metadata's (with the metadata's type), else Anatomical Structure for a given type, else "Tissue".
    Raises SegmentCodeError for a malformed code or an unknown scheme.
    """
    info = clinical(model)
    segment_meta = info.get("segment") or {}
    generic = False
    if override:
        type_code = parse_code(override, "--segment-code")
        default_category = parse_code("SCT:123037004:Anatomical Structure")
    elif segment_meta.get("type"):
        type_code = parse_code(segment_meta["type"], f"{model.source}: metadata clinical.segment.type")
        default_category = parse_code(
            segment_meta.get("category") or "SCT:123037004:Anatomical Structure",
            f"{model.source}: metadata clinical.segment.category",
        )
    else:
        generic = True
        type_code, default_category = GENERIC_TYPE, GENERIC_CATEGORY
    category_code = parse_code(category, "--segment-category") if category else default_category
    algorithm = info.get("algorithm") or {}
    name = str(algorithm.get("name") or f"medtransfer {Path(model.source.split(' ', 1)[-1]).name}")
    version = str(algorithm.get("version") or "unversioned")
    digest = algorithm.get("weights_sha256")
    if digest:
        version = f"{version} sha256:{digest[:16]}"
    return {
        "label": model.label_name[:64] or "foreground", "category": category_code, "type": type_code,
        "generic": generic, "algorithm_name": name[:64], "algorithm_version": version[:64],
    }


def _postprocessing_of(models: Sequence[SegmentationModel], enabled: bool) -> dict | None:
    """The first model's learned post-processing (an ensemble uses its first member's), unless disabled."""
    if not enabled:
        return None
    try:
        return check_postprocessing(clinical(models[0]).get("postprocessing"), f"{models[0].source} postprocessing")
    except PostprocessError as error:
        raise SegmentError(str(error)) from None


def load_models(models, trusted: bool, device: torch.device) -> list[SegmentationModel]:
    items = [models] if isinstance(models, (str, os.PathLike, SegmentationModel)) else list(models)
    if not items:
        raise SegmentError("no model given")
    return [m if isinstance(m, SegmentationModel) else load_model(m, trusted=trusted, device=device) for m in items]


@dataclass
class ScanResult:
    """One row of summary.csv."""

    scan: str
    input: str
    output_nifti: str | None = None
    output_dicom_seg: str | None = None
    volume_ml: float | None = None
    n_voxels: int | None = None
    seconds: float | None = None
    status: str = "ok"
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class _Scan:
    name: str
    input: Path
    series: SeriesInfo | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    alternative: str | None = None  # a more specific name, used when two scans would share `name`


# --- finding the scans --------------------------------------------------------------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)


@contextmanager
def _collect_warnings():
    handler = _Collect()
    loggers = [logging.getLogger(name) for name in _WARNING_LOGGERS]
    for item in loggers:
        item.addHandler(handler)
    try:
        yield handler.messages
    finally:
        for item in loggers:
            item.removeHandler(handler)


def _is_image(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "scan"


def _dicom_scans(folder: Path, series_uid: str | None) -> list[_Scan]:
    """The series of one DICOM folder (searched recursively, grouped by SeriesInstanceUID) to segment."""
    name = _safe_name(folder.name)
    with _collect_warnings() as warnings:
        try:
            uids = list(find_series(folder))
            if not uids or (series_uid is None and len(uids) > 1):
                select_series(folder)  # raises the error that explains (nothing found / which series there are)
            chosen = uids if series_uid in (None, ALL_SERIES) else [u for u in uids if u == series_uid]
            infos = [select_series(folder, uid) for uid in chosen]
        except DicomInputError as error:
            message = str(error)
            if isinstance(error, SeveralSeriesError):
                message += "\n(medtransfer segment: --series-uid UID, or --series-uid all to segment each series)"
            return [_Scan(name=name, input=folder, error=message, warnings=list(warnings))]
    scans = []
    descriptions = Counter(info.description for info in infos)
    for info in infos:
        detail = _safe_name(info.description) if info.description and descriptions[info.description] == 1 else ""
        specific = f"{name}_{detail or info.uid[-8:]}"
        scans.append(
            _Scan(
                name=specific if len(infos) > 1 else name,
                input=folder,
                series=info,
                warnings=list(warnings),
                alternative=specific if len(infos) == 1 else f"{specific}_{info.uid[-8:]}",
            )
        )
    return scans


def _file_problem(path: Path, root: Path | None) -> str | None:
    """Why `path` cannot be a scan, from its header alone: it resolves outside the input folder `root` (a
    symlink leading elsewhere; `--allow-outside-root` lifts it), or its header disagrees with the file."""
    from medtransfer.data.damaged import check_image_file
    from medtransfer.data.paths import confined

    try:
        if root is not None:
            confined(root, path.absolute(), "input", str(root))
        check_image_file(path, root or path.parent)
    except MedtransferError as error:
        return str(error)
    return None


def _walk(folder: Path, series_uid: str | None, exclude: Path | None = None, root: Path | None = None) -> list[_Scan]:
    root = root or folder
    entries = sorted(
        p for p in folder.iterdir() if not p.name.startswith(".") and (exclude is None or p.resolve() != exclude)
    )
    files = [p for p in entries if p.is_file()]
    scans = [
        _Scan(name=_safe_name(_stem(p)), input=p, alternative=_safe_name(f"{folder.name}_{_stem(p)}"),
              error=_file_problem(p, root))
        for p in files
        if _is_image(p)
    ]
    if any(_is_dicom(p) for p in files if not _is_image(p)):
        escaping = next((problem for p in files if not _is_image(p) for problem in [_file_problem(p, root)]
                         if problem), None)
        if escaping:
            return scans + [_Scan(name=_safe_name(folder.name), input=folder, error=escaping)]
        return scans + _dicom_scans(folder, series_uid)  # the DICOM scan covers the folder's sub-folders too
    for sub in entries:
        if sub.is_dir():
            problem = _file_problem(sub, root)
            scans += [_Scan(name=_safe_name(sub.name), input=sub, error=problem)] if problem else \
                _walk(sub, series_uid, exclude, root)
    return scans


def find_scans(
    inputs: Iterable[str | os.PathLike], series_uid: str | None = None, exclude: str | os.PathLike | None = None
) -> list[_Scan]:
    """Scans named by ``inputs``: image files, folders of them, and folders holding DICOM series.

    A folder holding several DICOM series is an error for that folder unless ``series_uid`` picks one or is
    ``"all"``. Names are file stems / folder names, made unique when two inputs would share one. ``exclude``
    (the output folder) is never searched, so masks written inside an input folder are not segmented next time.
    """
    inputs = list(inputs)
    exclude = Path(exclude).resolve() if exclude is not None else None
    scans: list[_Scan] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            scans.append(_Scan(name=_safe_name(_stem(path)), input=path, error=f"{path}: input not found"))
        elif path.is_file():
            if _is_image(path):  # named on the command line: its own root, but its header is checked
                scans.append(_Scan(name=_safe_name(_stem(path)), input=path, error=_file_problem(path, None)))
            elif _is_dicom(path):
                scans.append(_Scan(
                    name=_safe_name(path.stem), input=path,
                    error=f"{path}: a single DICOM file; give the folder that holds the whole series",
                ))
            else:
                scans.append(_Scan(
                    name=_safe_name(path.stem), input=path,
                    error=f"{path}: not a supported image file ({', '.join(IMAGE_SUFFIXES)}) or DICOM folder",
                ))
        else:
            found = _walk(path, series_uid, exclude)
            if not found and series_uid in (None, ALL_SERIES):
                found = [_Scan(
                    name=_safe_name(path.name), input=path,
                    error=f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) and no DICOM series found in the folder",
                )]
            scans += found
    if series_uid not in (None, ALL_SERIES) and not any(s.series and s.series.uid == series_uid for s in scans):
        scans.append(_Scan(
            name="series", input=Path(str(series_uid)),
            error=f"no DICOM series with SeriesInstanceUID {series_uid} in {', '.join(map(str, inputs))}",
        ))
    _unique_names(scans)
    return scans


def _unique_names(scans: list[_Scan]) -> None:
    counts = Counter(s.name for s in scans)
    for scan in scans:
        if counts[scan.name] > 1 and scan.alternative:
            scan.name = scan.alternative
    seen: Counter = Counter()
    for scan in scans:
        seen[scan.name] += 1
        if seen[scan.name] > 1:
            scan.name = f"{scan.name}_{seen[scan.name]}"


# --- one scan -----------------------------------------------------------------------------------------------


def _root_cause(error: BaseException) -> BaseException:
    """MONAI wraps errors raised inside transforms ("applying transform ..."); the innermost one says what."""
    while (error.__cause__ or error.__context__) is not None:
        inner = error.__cause__ or error.__context__
        if not str(inner):
            break
        error = inner
    return error


def _message(error: BaseException, scan: _Scan) -> str:
    root = _root_cause(error)
    known = isinstance(root, (DicomInputError, ValueError)) and type(root).__module__.startswith("medtransfer")
    text = str(root) if known else f"{type(root).__name__}: {root}"
    if str(scan.input) not in text:
        text = f"{scan.input}: {text}"
    if isinstance(root, SliceSpacingError):
        text += " (medtransfer segment: --allow-uneven)"
    return text


def _pipeline(model: SegmentationModel, scan: _Scan, allow_uneven: bool):
    """The model's preprocessing with a DICOM reader for this scan's series (asked first, as registered last)."""
    try:
        pipeline = copy.deepcopy(model.preprocessing)
    except Exception:  # a trusted bundle's transforms may not copy; readers registered on the original then pile up
        pipeline = model.preprocessing
    first = pipeline.transforms[0] if getattr(pipeline, "transforms", None) else None
    if isinstance(first, LoadImaged):
        uid = scan.series.uid if scan.series else None
        first.register(DicomSeriesReader(series_uid=uid, allow_uneven=allow_uneven))
    return pipeline


def _affine4(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=float)
    if affine.shape == (4, 4):
        return affine
    full = np.eye(4)  # 2D: a (3, 3) affine acting on (row, column, 1)
    full[:2, :2] = affine[:2, :2]
    full[:2, 3] = affine[:2, 2]
    return full


def _write_nifti(mask: np.ndarray, affine: np.ndarray, source: Path, path: Path) -> None:
    """uint8 NIfTI; for a NIfTI input the input's own header (qform/sform codes, units) is kept."""
    image = None
    if source.is_file() and source.name.lower().endswith((".nii", ".nii.gz")):
        original = nib.load(source)
        same_grid = np.allclose(original.affine, _affine4(affine), atol=1e-3)
        if tuple(original.shape[: mask.ndim]) == mask.shape and same_grid:
            header = original.header.copy()
            header.set_data_dtype(np.uint8)
            image = nib.Nifti1Image(mask, original.affine, header=header)
    if image is None:
        affine4 = _affine4(affine)
        image = nib.Nifti1Image(mask, affine4)
        image.set_qform(affine4, code=1)
        image.set_sform(affine4, code=1)
    image.header.set_slope_inter(1.0, 0.0)
    image.header["cal_min"], image.header["cal_max"] = 0, 1
    image.header["descrip"] = b"medtransfer binary segmentation"
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp{''.join(path.suffixes)}")
    try:
        nib.save(image, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@dataclass
class SegmentOptions:
    """How each scan is predicted and written: the ensemble, TTA, post-processing, DICOM-SEG coding, preview."""

    models: list[SegmentationModel]
    tta: bool = False
    postprocessing: dict | None = None
    coding: dict | None = None
    preview: bool = False


def _segment_scan(model: SegmentationModel, scan: _Scan, nifti: Path, dicom: Path | None, allow_uneven: bool,
                  options: SegmentOptions | None = None) -> dict:
    options = options or SegmentOptions(models=[model])
    pipeline = _pipeline(model, scan, allow_uneven)
    data = pipeline({"image": str(scan.input)})
    image = data["image"]
    original_shape = tuple(int(s) for s in image.meta["spatial_shape"])
    original_affine = image.meta.get("original_affine")  # readers of PNG etc. do not record it
    plain = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    probs = probabilities(options.models, plain[None], tta=options.tta)[0]
    # argmax; for two channels a comparison gives the same (ties -> 0) at a fraction of torch's strided argmax cost
    labels = (probs[1] > probs[0]) if probs.shape[0] == 2 else probs.argmax(0)
    data["pred"] = MetaTensor(labels[None].to(torch.float32).cpu())
    del probs, labels
    keys = ["pred", "image"] if options.preview else "pred"
    data = Invertd(keys=keys, transform=pipeline, orig_keys="image", nearest_interp=[True, False][: len(keys)]
                   if options.preview else True, to_tensor=True)(data)
    pred = data["pred"]
    mask = np.asarray(pred[0].detach().cpu().numpy()).round().astype(np.uint8)
    mask = _postprocess(mask, pred, options.postprocessing)
    affine = np.asarray(pred.affine, dtype=float)
    same_affine = original_affine is None or np.allclose(
        _affine4(affine), _affine4(np.asarray(original_affine, dtype=float)), atol=1e-3
    )
    if mask.shape != original_shape or not same_affine:
        raise SegmentError(
            f"{scan.input}: the mask came back with shape {mask.shape} / affine {np.round(affine, 3).tolist()} "
            f"instead of the input's {original_shape} / {np.round(np.asarray(original_affine), 3).tolist()}; "
            f"not written"
        )
    _write_nifti(mask, affine, scan.input, nifti)
    if dicom is not None:
        try:
            write_dicom_seg(mask, scan.series, dicom, **_dicom_seg_arguments(model, options))
        except Exception:
            nifti.unlink(missing_ok=True)  # no half-finished pair: the NIfTI alone would look like a full result
            raise
    n_voxels = int(mask.sum())
    voxel_mm3 = abs(float(np.linalg.det(_affine4(affine)[:3, :3]))) if mask.ndim == 3 else None
    measured = {
        "n_voxels": n_voxels,
        "volume_ml": round(n_voxels * voxel_mm3 / 1000.0, 4) if voxel_mm3 is not None else None,
    }
    if options.preview:
        image = data["image"]
        measured["preview_image"] = np.asarray(image[0].detach().cpu().numpy(), dtype=np.float32)
        measured["preview_mask"], measured["preview_affine"] = mask, _affine4(affine)
    return measured


def _postprocess(mask: np.ndarray, pred, spec: dict | None) -> np.ndarray:
    """The learned post-processing in the output grid (spacing from the mask's affine: mm³, or mm² in 2D)."""
    if spec is None:
        return mask
    spacing = [float(s) for s in getattr(pred, "pixdim", [])][: mask.ndim] or None
    return apply_postprocessing(mask, spec, spacing).astype(np.uint8)


def _dicom_seg_arguments(model: SegmentationModel, options: SegmentOptions) -> dict:
    coding = options.coding or segment_coding(model)
    return {
        "segment_label": coding["label"],
        "description": f"{coding['algorithm_name']} {coding['label']}"[:64],
        "algorithm_name": coding["algorithm_name"],
        "algorithm_version": coding["algorithm_version"],
        "segmented_property_category": coding["category"],
        "segmented_property_type": coding["type"],
    }


# --- the command --------------------------------------------------------------------------------------------


def _outputs(scan: _Scan, output: Path) -> tuple[Path, Path | None]:
    nifti = output / f"{scan.name}_seg.nii.gz"
    return nifti, (output / f"{scan.name}_seg.dcm") if scan.series is not None else None


def write_summary(results: Sequence[ScanResult], path: str | os.PathLike) -> Path:
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for result in results:
        row = asdict(result)
        row["warnings"] = " | ".join(result.warnings)
        writer.writerow({k: "" if row[k] is None else row[k] for k in SUMMARY_COLUMNS})
    data = stream.getvalue().encode()
    atomic_write(Path(path), lambda handle: handle.write(data))
    return Path(path)


# --- the output folder (hostile-input checks) ------------------------------------------------------------------

_DISK_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)


def _check_output_folder(output: Path, inputs: Sequence[str | os.PathLike]) -> None:
    """Refuse an output folder that is, or lies inside, an input folder (masks would land among the scans and be
    segmented on the next call)."""
    target = Path(os.path.realpath(output))
    for item in inputs:
        source = Path(os.path.realpath(item))  # never raises (symlink loops are reported per scan later)
        if source.is_dir() and (target == source or source in target.parents):
            raise SegmentError(f"--output {output} is {'the' if target == source else 'inside the'} input folder "
                               f"{item}; masks would be mixed with the scans. Choose a folder outside the inputs")


def _check_writable(output: Path) -> None:
    """Create the output folder and write a probe file once, so a read-only or full disk is one error up front."""
    import tempfile

    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output, prefix=".write-test-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise SegmentError(f"{output}: cannot write the masks there ({error.strerror or error})") from None


def _disk_error(error: BaseException, output: Path) -> OSError | None:
    """A write error of the output folder (full, read-only, no permission): not a problem of one scan."""
    root = _root_cause(error)
    if not isinstance(root, OSError):
        return None
    inside = bool(root.filename) and output.resolve() in Path(str(root.filename)).resolve().parents
    return root if root.errno in _DISK_ERRORS or (inside and root.errno in (errno.EACCES, errno.EPERM)) else None


def segment(
    model_or_bundle: str | os.PathLike | SegmentationModel,
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    series_uid: str | None = None,
    overwrite: bool = False,
    trusted: bool = False,
    allow_uneven: bool = False,
    device: str = "auto",
    progress: bool = True,
    precision: str | None = "auto",
    tta: bool = False,
    postprocess: bool = True,
    segment_code: str | None = None,
    segment_category: str | None = None,
    preview: bool = False,
) -> list[ScanResult]:
    """Segment every scan in ``inputs`` with a bundle / run folder (or a loaded SegmentationModel).

    Writes ``<scan>_seg.nii.gz`` per scan (and ``<scan>_seg.dcm``, a DICOM-SEG, per DICOM series) and
    ``summary.csv`` into ``output``. ``series_uid`` picks one series of a folder holding several (``"all"``: each).
    Raises BundleError / UntrustedBundleError for a model that cannot be used safely, SegmentError if outputs
    exist and ``overwrite`` is false (checked before anything is computed). A scan that fails gets status
    "failed" and its error; the others go on.

    ``model_or_bundle`` may be a list: an ensemble of models of one architecture (probabilities averaged).
    ``device`` "auto" picks CUDA, MPS, then CPU (DeviceError for an unavailable one). ``tta`` averages over flips;
    ``postprocess`` applies the model's learned post-processing; ``segment_code`` (SCHEME:VALUE:MEANING) overrides
    the DICOM-SEG type code; ``preview`` writes ``previews/<scan>.png`` and ``index.html``.
    ``precision`` follows the training rule (auto: bf16 autocast on CPUs with native bf16, CUDA AMP on GPUs,
    fp32 elsewhere; medtransfer.training.precision); None keeps the model's.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    output = Path(output)
    _check_output_folder(output, inputs)
    options = prepare_options(model_or_bundle, trusted, device, tta, postprocess, segment_code, segment_category,
                              preview)
    model = options.models[0]
    if precision is not None:
        from medtransfer.training.precision import resolve_precision

        choice = resolve_precision(precision, model.device, announce=progress)
        for member in options.models:  # every member of an ensemble runs in the same precision
            member.precision = choice
    scans = find_scans(inputs, series_uid, exclude=output)
    planned = [path for scan in scans if scan.error is None for path in _outputs(scan, output) if path is not None]
    planned += _preview_outputs(scans, output) if preview else []
    existing = [p for p in (*planned, output / SUMMARY_NAME) if p.exists()]
    if existing and not overwrite:
        listing = "\n".join(f"  {p}" for p in existing[:20])
        raise SegmentError(
            f"{output}: {len(existing)} output file(s) already exist and would be overwritten:\n{listing}\n"
            f"choose another output folder, or pass --overwrite (overwrite=True)"
        )
    _check_writable(output)
    from medtransfer.folder_lock import FolderLock

    with FolderLock(output, "output folder"):  # a second `segment` into the same folder stops here
        return _segment_all(model, scans, output, allow_uneven, progress, options)


def _segment_all(model: SegmentationModel, scans: list[_Scan], output: Path, allow_uneven: bool,
                 progress: bool, options: SegmentOptions) -> list[ScanResult]:
    results: list[ScanResult] = []
    previews: dict[str, str] = {}
    bar = tqdm(scans, desc="segment", unit="scan", disable=not progress)
    for scan in bar:
        bar.set_postfix_str(scan.name)
        result = ScanResult(scan=scan.name, input=str(scan.input), warnings=list(scan.warnings))
        if scan.error is not None:
            result.status, result.error = "failed", scan.error
            results.append(result)
            continue
        nifti, dicom = _outputs(scan, output)
        started = time.perf_counter()
        with _collect_warnings() as warnings:
            try:
                measured = _segment_scan(model, scan, nifti, dicom, allow_uneven, options)
                _keep_preview(previews, scan, measured, options, output)
                result.output_nifti = str(nifti)
                result.output_dicom_seg = str(dicom) if dicom else None
                result.n_voxels, result.volume_ml = measured["n_voxels"], measured["volume_ml"]
            except Exception as error:  # one bad scan must not stop the others; the row says what went wrong
                disk = _disk_error(error, output)
                if disk is not None:  # a full / read-only disk fails every later scan too: one error, now
                    raise SegmentError(f"{disk.filename or output}: cannot write ({disk.strerror}); "
                                       f"{len(results)} scan(s) were written before") from None
                result.status, result.error = "failed", _message(error, scan)
                logger.debug("scan %s failed", scan.input, exc_info=True)
        result.seconds = round(time.perf_counter() - started, 3)
        result.warnings += [w for w in warnings if w not in result.warnings]
        if dicom is not None and options.coding and options.coding["generic"]:
            result.warnings.append(_GENERIC_CODE_WARNING)
        results.append(result)
    write_summary(results, output / SUMMARY_NAME)
    if options.preview:
        from medtransfer.inference.preview import write_index

        write_index(output, results, previews)
    return results


_GENERIC_CODE_WARNING = (
    "DICOM-SEG segment coded with the generic SCT 85756007 'Tissue': the model's data manifest gives no "
    "label_codes; pass --segment-code SCHEME:VALUE:MEANING (e.g. SCT:10200004:Liver)"
)


def prepare_options(model_or_bundle, trusted: bool, device, tta: bool, postprocess: bool, segment_code,
                    segment_category, preview: bool) -> SegmentOptions:
    """Load and check the model(s) and settle TTA, post-processing and coding before any scan is read."""
    models = load_models(model_or_bundle, trusted, resolve_device(device))
    if len(models) > 1:
        check_ensemble(models)
    if tta:
        check_tta(models)
    try:
        coding = segment_coding(models[0], segment_code, segment_category)
    except SegmentCodeError as error:
        raise SegmentError(str(error)) from None
    return SegmentOptions(
        models=models, tta=tta, postprocessing=_postprocessing_of(models, postprocess), coding=coding, preview=preview,
    )


def _preview_outputs(scans: Sequence[_Scan], output: Path) -> list[Path]:
    return [output / "previews" / f"{s.name}.png" for s in scans if s.error is None] + [output / "index.html"]


def _keep_preview(previews: dict, scan: _Scan, measured: dict, options: SegmentOptions, output: Path) -> None:
    """Write ``previews/<scan>.png`` and remember its path for index.html."""
    if not options.preview:
        return
    from medtransfer.inference.preview import write_preview

    path = write_preview(
        output / "previews" / f"{scan.name}.png", measured.pop("preview_image"), measured.pop("preview_mask"),
        measured.pop("preview_affine"), title=scan.name,
    )
    previews[scan.name] = str(path.relative_to(output))
