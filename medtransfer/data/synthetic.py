"""The embedded default data set: deterministic synthetic phantoms for binary segmentation.

A bundle run with no data still has to train and evaluate something meaningful, so this module draws
organ-like phantoms rather than circles on noise. Each case has a lobulated "organ" (the label) inside a
"body" with a bright outer rim, textured tissue, unlabelled distractor blobs of organ-like intensity, a
smooth multiplicative bias field and Rician noise. No single intensity threshold separates the organ, so a
network has to use shape and context. Data sets are generated once and cached under ``MEDTRANSFER_HOME``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

SYNTHETIC_VERSION = 1  # bump when the generator's output changes

logger = logging.getLogger("medtransfer.data")

_COMPLETE_MARKER = "COMPLETE"
_SPACING_MM = 1.0
_CASE_SEED_STRIDE = 100003


# --------------------------------------------------------------------------------------------------------------
# Random smooth fields and shapes
# --------------------------------------------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cells: int) -> np.ndarray:
    """A zero-mean, unit-std random field with about ``cells`` undulations per axis.

    A coarse Gaussian grid is upsampled by cubic-spline interpolation; ``cells`` directly sets the spatial
    frequency. The interpolation is linear and separable, so it is applied one axis at a time as a small
    matrix product, which is an order of magnitude faster than ``map_coordinates`` on the full grid.
    """
    field = rng.standard_normal((cells + 1,) * len(shape))
    for size in shape:  # contract the leading axis, append the upsampled one: axes end in their original order
        field = np.tensordot(field, _spline_upsampling(cells, size), axes=([0], [1]))
    return ((field - field.mean()) / (field.std() + 1e-8)).astype(np.float32)


def _spline_upsampling(cells: int, size: int) -> np.ndarray:
    """The (size, cells + 1) matrix that cubic-spline interpolates cells + 1 knots onto size points."""
    points = np.linspace(0.0, cells, size)[np.newaxis]
    knots = np.eye(cells + 1)
    return np.stack([ndimage.map_coordinates(knot, points, order=3, mode="nearest") for knot in knots], axis=1)


def _random_rotation(rng: np.random.Generator, dimensions: int) -> np.ndarray:
    """A uniformly random rotation matrix (QR of a Gaussian matrix, with signs fixed so det = +1)."""
    q, r = np.linalg.qr(rng.standard_normal((dimensions, dimensions)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def _unit_ball_volume(dimensions: int) -> float:
    """Volume (area in 2D) of the unit ball, used to turn a target voxel count into a radius."""
    return math.pi ** (dimensions / 2) / math.gamma(dimensions / 2 + 1)


def _semi_axes(rng: np.random.Generator, volume: float, dimensions: int, elongation: float) -> np.ndarray:
    """Semi-axes of an ellipsoid of the given volume; log-normal ratios of spread ``elongation``.

    Normalising the ratios to a geometric mean of one keeps the volume fixed whatever the elongation.
    """
    ratios = np.exp(rng.normal(0.0, elongation, dimensions))
    ratios /= np.exp(np.log(ratios).mean())
    radius = (volume / _unit_ball_volume(dimensions)) ** (1.0 / dimensions)
    return radius * ratios


def _fourier_field(rng: np.random.Generator, points: np.ndarray, frequency: float, terms: int = 6) -> np.ndarray:
    """A smooth random function of ``points`` (shape (d, ...)): a sum of random plane waves, about unit std.

    Evaluated in a blob's own coordinates, its detail scales with the blob, whatever the blob's size.
    """
    field = np.zeros(points.shape[1:], dtype=np.float32)
    for _ in range(terms):
        direction = rng.standard_normal(points.shape[0])
        wave_vector = frequency * rng.uniform(0.5, 1.5) * direction / np.linalg.norm(direction)
        phase = np.tensordot(wave_vector.astype(np.float32), points, axes=1) + np.float32(rng.uniform(0, 2 * np.pi))
        field += np.float32(rng.standard_normal()) * np.cos(phase)
    return field * np.float32(math.sqrt(2.0 / terms))


def _blob(
    rng: np.random.Generator,
    grid: np.ndarray,
    center: np.ndarray,
    semi_axes: np.ndarray,
    roughness: float,
    bend: float = 0.0,
    rotation: np.ndarray | None = None,
) -> np.ndarray:
    """A lobulated, optionally bent ellipsoid: the irregular outline of a real organ rather than an ellipse.

    In the blob's rotated, radius-normalised frame, the coordinates are first warped by a smooth random
    displacement (``bend``: kidney and banana shapes), then the radius is compared with
    ``1 + roughness * h(direction)``, where ``h`` is a low-frequency function of direction only, i.e. a
    random combination of low-order radial harmonics (lobes). ``rotation`` defaults to a random one.
    """
    dimensions = grid.shape[0]
    column = (dimensions,) + (1,) * dimensions
    offsets = grid - center.astype(np.float32).reshape(column)
    if rotation is None:
        rotation = _random_rotation(rng, dimensions)
    local = np.tensordot(rotation.T.astype(np.float32), offsets, axes=1) / semi_axes.astype(np.float32).reshape(column)
    if bend:
        warp = [_fourier_field(rng, local, frequency=1.2, terms=3) for _ in range(dimensions)]
        local = local + np.float32(bend) * np.stack(warp)
    radius = np.sqrt((local**2).sum(axis=0))
    direction = local / np.maximum(radius, 1e-6)
    return radius < 1.0 + roughness * _fourier_field(rng, direction, frequency=2.5)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component with holes filled: a label must be one solid organ."""
    components, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        mask = components == sizes.argmax()
    return ndimage.binary_fill_holes(mask)


def _point_in_ellipsoid(
    rng: np.random.Generator, center: np.ndarray, semi_axes: np.ndarray, fraction: float
) -> np.ndarray:
    """A uniform random point inside the axis-aligned ellipsoid scaled by ``fraction``."""
    direction = rng.standard_normal(len(center))
    direction /= np.linalg.norm(direction)
    radius = fraction * rng.uniform() ** (1.0 / len(center))
    return center + semi_axes * direction * radius


# --------------------------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------------------------


def _body(
    rng: np.random.Generator, grid: np.ndarray, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The body outline, its interior (the body without its outer rim) and its centre and semi-axes.

    The body nearly fills the field of view, as in a clinical scan; in 3D it runs on past both ends of the
    last (slice) axis like a torso, so every slice shows a body section. Its rim becomes a bright layer
    (like subcutaneous fat): a second source of organ-bright voxels that a global threshold cannot tell
    apart. The rim follows the body outline only, not where the field of view cuts the body.
    """
    size = np.asarray(shape, dtype=float)
    center = (size - 1) / 2 + rng.uniform(-0.02, 0.02, len(shape)) * size
    semi_axes = size * rng.uniform(0.40, 0.47, len(shape))
    if len(shape) == 3:
        semi_axes[-1] = size[-1] * rng.uniform(0.65, 0.8)
    upright = np.eye(len(shape))
    body = _largest_component(_blob(rng, grid, center, semi_axes, roughness=0.05, rotation=upright))
    rim_width = max(2, round(rng.uniform(0.03, 0.05) * size.min()))
    interior = ndimage.binary_erosion(body, iterations=rim_width, border_value=1)
    return body, interior, np.stack([center, semi_axes])


def _organ(rng: np.random.Generator, grid: np.ndarray, interior: np.ndarray, body_geometry: np.ndarray) -> np.ndarray:
    """The labelled organ: a lobulated, bent ellipsoid of random size, elongation, orientation and position.

    Its size is drawn as a foreground fraction, log-uniform and smaller in 3D, where a given fraction
    looks much larger on a slice. Its centre is drawn far enough inside the body that the organ mostly
    fits, and it is clipped to the body's interior less a thin layer, so that body tissue separates it from
    the equally bright rim.
    """
    dimensions = grid.shape[0]
    low, high = (0.035, 0.15) if dimensions == 2 else (0.03, 0.09)
    fraction = math.exp(rng.uniform(math.log(low), math.log(high)))
    semi_axes = _semi_axes(rng, fraction * interior.size, dimensions, elongation=0.3)
    body_center, body_semi_axes = body_geometry
    room = max(0.0, 0.85 - 1.2 * semi_axes.max() / body_semi_axes.min())
    center = _point_in_ellipsoid(rng, body_center, body_semi_axes, room)
    organ = _blob(rng, grid, center, semi_axes, roughness=0.2, bend=0.25)
    organ &= ndimage.binary_erosion(interior, iterations=2, border_value=1)
    return _largest_component(organ)


def _distractors(
    rng: np.random.Generator, grid: np.ndarray, organ: np.ndarray, interior: np.ndarray
) -> list[np.ndarray]:
    """Two to four unlabelled blobs (other organs, vessels) near the organ's size, not touching it.

    They are what makes the task a segmentation rather than a thresholding problem. Strongly elongated
    ones read as vessels or bowel loops. Centres are drawn only where the distance to the organ leaves room
    for the blob, so a draw rarely fails; a failed one (a lobe reaching the organ) is redrawn a bounded
    number of times, which keeps generation time predictable. Distractors may abut each other.
    """
    dimensions = grid.shape[0]
    organ_volume = float(organ.sum())
    distance_to_organ = ndimage.distance_transform_edt(~organ)
    keep_clear = distance_to_organ <= 2
    blobs = []
    for _ in range(int(rng.integers(2, 5))):
        for _attempt in range(4):
            volume = organ_volume * rng.uniform(0.25, 0.8)
            semi_axes = _semi_axes(rng, volume, dimensions, elongation=rng.choice([0.2, 0.8]))
            candidates = np.flatnonzero(interior & (distance_to_organ > 2 + 1.1 * semi_axes.max()))
            if candidates.size == 0:
                continue
            center = np.array(np.unravel_index(rng.choice(candidates), organ.shape), dtype=float)
            blob = _blob(rng, grid, center, semi_axes, roughness=0.2, bend=0.3) & interior
            if blob.any() and not (blob & keep_clear).any():
                blobs.append(blob)
                break
    return blobs


# --------------------------------------------------------------------------------------------------------------
# Image formation
# --------------------------------------------------------------------------------------------------------------


def _textured(rng: np.random.Generator, shape: tuple[int, ...], mean: float, contrast: float) -> np.ndarray:
    """Tissue intensity with smooth internal texture, so no region is a flat constant."""
    return mean * (1.0 + contrast * _smooth_field(rng, shape, cells=max(4, min(shape) // 6)))


def _bias_field(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth multiplicative intensity inhomogeneity (coil shading), about +-20 % across the image."""
    return np.exp(rng.uniform(0.1, 0.2) * _smooth_field(rng, shape, cells=2))


def _rician_noise(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise on both channels, as in MR magnitude images."""
    real = image + rng.normal(0.0, sigma, image.shape)
    imaginary = rng.normal(0.0, sigma, image.shape)
    return np.sqrt(real**2 + imaginary**2)


def _checked_shape(dimensions: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape as plain ints, after checking it matches the dimensionality (a 2D/3D mix-up fails loudly here)."""
    shape = tuple(int(n) for n in shape)
    if dimensions not in (2, 3) or len(shape) != dimensions:
        raise ValueError(f"need dimensions 2 or 3 and a shape of that length, got {dimensions} and {shape}")
    return shape


def phantom_case(dimensions: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (float32, roughly in [0, 1] but with noise) and its binary label (uint8 {0,1}).

    Deterministic in ``seed``: the same seed gives identical arrays (for given numpy/scipy builds), so a cached
    data set can be rebuilt exactly. The organ covers about 2-20 % of the image.
    """
    shape = _checked_shape(dimensions, shape)
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)

    body, interior, body_geometry = _body(rng, grid, shape)
    organ = _organ(rng, grid, interior, body_geometry)
    distractors = _distractors(rng, grid, organ, interior)

    organ_level = rng.uniform(0.55, 0.7)
    image = np.full(shape, rng.uniform(0.0, 0.05), dtype=np.float32)
    image[body] = _textured(rng, shape, rng.uniform(0.25, 0.38), 0.08)[body]
    rim = body & ~interior
    image[rim] = _textured(rng, shape, organ_level * rng.uniform(0.95, 1.25), 0.06)[rim]
    for blob in distractors:
        image[blob] = _textured(rng, shape, organ_level * rng.uniform(0.85, 1.15), 0.08)[blob]
    image[organ] = _textured(rng, shape, organ_level, 0.08)[organ]

    image = ndimage.gaussian_filter(image, sigma=0.7)  # partial-volume blur: no razor-sharp edges
    image *= _bias_field(rng, shape)
    image = _rician_noise(rng, image, sigma=rng.uniform(0.03, 0.06))
    return image.astype(np.float32), organ.astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------
# On-disk cache
# --------------------------------------------------------------------------------------------------------------


def default_home() -> Path:
    """MEDTRANSFER_HOME or ~/.cache/medtransfer (read the env var at call time, not import time)."""
    home = os.environ.get("MEDTRANSFER_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "medtransfer"


def synthetic_dataset_root(dimensions: int, num_cases: int, shape: tuple[int, ...], seed: int) -> Path:
    """Where a data set is cached: every generation parameter is in the name, so different requests never clash.

    ``default_home() / f"synthetic_{dimensions}d_v{SYNTHETIC_VERSION}_n{num_cases}_{'x'.join(shape)}_s{seed}"``
    """
    size = "x".join(map(str, shape))
    return default_home() / f"synthetic_{dimensions}d_v{SYNTHETIC_VERSION}_n{num_cases}_{size}_s{seed}"


def case_names(num_cases: int) -> list[str]:
    """['case_000.nii.gz', 'case_001.nii.gz', ...]"""
    return [f"case_{i:03d}.nii.gz" for i in range(num_cases)]


def _generation_parameters(dimensions: int, num_cases: int, shape: tuple[int, ...], seed: int) -> dict:
    """What the COMPLETE marker records: enough to tell whether a cached folder matches a request."""
    return {
        "version": SYNTHETIC_VERSION,
        "dimensions": dimensions,
        "num_cases": num_cases,
        "shape": list(shape),
        "seed": seed,
        "spacing_mm": _SPACING_MM,
    }


def _is_complete(root: Path, parameters: dict) -> bool:
    """True when root holds a finished generation for exactly these parameters."""
    try:
        return json.loads((root / _COMPLETE_MARKER).read_text()) == parameters
    except (OSError, ValueError):
        return False


def _save_nifti(array: np.ndarray, path: Path) -> None:
    """Save with a diag(spacing) affine and millimetre units; the array's dtype is kept on disk."""
    image = nib.Nifti1Image(array, np.diag([_SPACING_MM] * 3 + [1.0]))
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def _write_cases(folder: Path, dimensions: int, num_cases: int, shape: tuple[int, ...], seed: int) -> None:
    """Write every case's image (float32) and label (uint8); case i uses seed ``seed * 100003 + i``."""
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for i, name in enumerate(case_names(num_cases)):
        image, label = phantom_case(dimensions, shape, seed * _CASE_SEED_STRIDE + i)
        _save_nifti(image, folder / "images" / name)
        _save_nifti(label, folder / "labels" / name)


def _discard(folder: Path) -> None:
    """Remove a folder that may be in use by a racing process: rename it away atomically first."""
    trash = folder.with_name(f".{folder.name}.trash-{uuid.uuid4().hex}")
    try:
        os.rename(folder, trash)
    except FileNotFoundError:
        return  # another process already moved it
    shutil.rmtree(trash, ignore_errors=True)


def _publish(staging: Path, root: Path, parameters: dict, attempts: int = 5) -> None:
    """Move a finished staging folder into place unless a racing process's complete result got there first.

    ``os.rename`` onto an existing non-empty folder fails, so exactly one writer wins. A stale (incomplete or
    mismatched) folder in the way is discarded and the rename retried; the retries are bounded so that a
    rename failing for another reason (permissions, a file named like the folder) surfaces as its error.
    """
    for attempt in range(attempts):
        try:
            os.rename(staging, root)
            return
        except OSError:
            if _is_complete(root, parameters):
                return
            if attempt == attempts - 1:
                raise
            if root.is_dir():
                _discard(root)


def ensure_synthetic_dataset(
    dimensions: int, num_cases: int, shape: tuple[int, ...], seed: int = 0, root: Path | None = None
) -> Path:
    """Generate (if absent) root/images/case_XXX.nii.gz and root/labels/case_XXX.nii.gz; return root.

    ``root`` defaults to ``synthetic_dataset_root(...)``. Cases are written into a hidden temporary sibling,
    a ``COMPLETE`` marker holding the generation parameters is added last, and the folder is renamed into
    place, so readers never see a partial data set and concurrent callers agree on one copy. A folder
    without a matching marker (an interrupted run) is regenerated. Case ``i`` uses seed ``seed * 100003 + i``.
    """
    shape = _checked_shape(dimensions, shape)
    if num_cases < 1 or seed < 0:
        raise ValueError(f"need num_cases >= 1 and seed >= 0, got {num_cases} and {seed}")
    root = Path(root) if root is not None else synthetic_dataset_root(dimensions, num_cases, shape, seed)
    parameters = _generation_parameters(dimensions, num_cases, shape, seed)
    if _is_complete(root, parameters):
        return root

    logger.info("Generating synthetic %dD data set (%d cases of %s) in %s", dimensions, num_cases, shape, root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.with_name(f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}")
    try:
        _write_cases(staging, dimensions, num_cases, shape, seed)
        (staging / _COMPLETE_MARKER).write_text(json.dumps(parameters, indent=2))
        _publish(staging, root, parameters)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
