"""Exact and near-duplicate images: content fingerprints, the perceptual rule, and groups of duplicates.

Public data sets hold re-saved, re-cropped and re-exported copies of the same image (BUSI, for one). A split
that puts two copies on both sides of the train/test line inflates test Dice, and a pretraining source that
holds a copy of a target test image has seen the test set. Names do not reveal copies, so images are compared
by content:

* **exact**: the SHA-256 of the decoded pixel array (shape, dtype and values), so a re-encoded PNG of the
  same pixels is an exact duplicate;
* **near** (the perceptual rule): the Pearson correlation of normalised grey thumbnails is above
  ``CORRELATION_THRESHOLD`` (0.95). The thumbnail of a 2D image is the grey image (colour → PIL luminance)
  resized to 64 × 64 with PIL's antialiased bilinear filter, ignoring the aspect ratio; of a 3D volume, the
  channel mean average-pooled to 32 × 32 × 32. Each thumbnail is centred and scaled to unit norm, so one
  matrix product gives all pairwise correlations. A constant image has no correlation with anything and is
  matched by its exact hash only.

Duplicate pairs are joined into groups, the connected components of the pair graph (a copy of a copy is in
the same group). Fingerprints are cached per file (path, size, modification time) under
``MEDTRANSFER_HOME/fingerprints``, so repeated checks of a data set take seconds.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CORRELATION_THRESHOLD = 0.95
THUMBNAIL_2D = (64, 64)
THUMBNAIL_3D = (32, 32, 32)
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
CACHE_VERSION = "v1"
RULE = (
    f"exact: equal SHA-256 of the decoded pixels; near: Pearson correlation > {CORRELATION_THRESHOLD} between "
    f"normalised grey thumbnails (2D: {THUMBNAIL_2D[0]}x{THUMBNAIL_2D[1]}, PIL bilinear; 3D: "
    f"{'x'.join(map(str, THUMBNAIL_3D))}, average pooling); groups = connected components of duplicate pairs"
)


class DuplicateCheckError(ValueError):
    """An image could not be fingerprinted; the message names the file."""


@dataclass(frozen=True)
class Fingerprints:
    """Content fingerprints of a list of images, in the order given."""

    paths: tuple[str, ...]
    hashes: tuple[str, ...]
    thumbnails: np.ndarray  # (n, d) float32, rows centred and of unit norm (zero rows for constant images)

    def __len__(self) -> int:
        return len(self.paths)


# Reading ----------------------------------------------------------------------------------------------------
def _pixel_hash(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.shape}|{array.dtype.str}|".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def _normalised(thumbnail: np.ndarray) -> np.ndarray:
    values = np.asarray(thumbnail, dtype=np.float64).ravel()
    values = values - values.mean()
    norm = np.linalg.norm(values)
    if not np.isfinite(norm) or norm < 1e-8 * max(1.0, values.size):
        return np.zeros(values.size, dtype=np.float32)
    return (values / norm).astype(np.float32)


def _thumbnail_2d(grey: np.ndarray) -> np.ndarray:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32), mode="F")
    return np.asarray(image.resize(THUMBNAIL_2D[::-1], Image.BILINEAR), dtype=np.float32)


def _thumbnail_3d(grey: np.ndarray) -> np.ndarray:
    import torch

    volume = torch.as_tensor(np.ascontiguousarray(grey, dtype=np.float32))[None, None]
    return torch.nn.functional.adaptive_avg_pool3d(volume, THUMBNAIL_3D)[0, 0].numpy()


def fingerprint_file(path: str | os.PathLike) -> tuple[str, np.ndarray]:
    """(pixel hash, normalised thumbnail) of one image file or DICOM series folder."""
    path = Path(path)
    try:
        if path.suffix.lower() in PIL_SUFFIXES:
            from PIL import Image

            with Image.open(path) as image:
                image.load()
                pixels = np.asarray(image)
                grey = image.convert("L") if image.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr", "1") else image
                grey = np.asarray(grey.convert("F"), dtype=np.float32)
            return _pixel_hash(pixels), _normalised(_thumbnail_2d(grey))
        from monai.transforms import LoadImage

        from medtransfer.data.readers import DicomSeriesReader

        loader = LoadImage(image_only=True, ensure_channel_first=True)
        loader.register(DicomSeriesReader())
        pixels = np.asarray(loader(str(path)))
    except (OSError, ValueError, RuntimeError) as error:
        raise DuplicateCheckError(f"{path}: cannot read the image to compare its content ({error})") from None
    grey = pixels.mean(axis=0)
    spatial = [s for s in grey.shape]
    while len(spatial) > 2 and spatial[-1] == 1:
        spatial.pop()
    grey = grey.reshape(spatial)
    if grey.ndim == 2:
        return _pixel_hash(pixels), _normalised(_thumbnail_2d(grey))
    if grey.ndim == 3:
        return _pixel_hash(pixels), _normalised(_thumbnail_3d(grey))
    raise DuplicateCheckError(f"{path}: a {grey.ndim}D image; duplicates are compared in 2D or 3D only")


# Cache ------------------------------------------------------------------------------------------------------
def _cache_folder() -> Path:
    from medtransfer.data.synthetic import default_home

    return default_home() / "fingerprints" / CACHE_VERSION


def _stat_key(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return int(stat.st_size), int(stat.st_mtime_ns)


def _load_cache(file: Path) -> dict[str, tuple[int, int, str, np.ndarray]]:
    try:
        with np.load(file, allow_pickle=False) as data:
            return {str(name): (int(size), int(mtime), str(digest), thumb)
                    for name, size, mtime, digest, thumb in zip(data["names"], data["sizes"], data["mtimes"],
                                                                 data["hashes"], data["thumbnails"])}
    except (OSError, ValueError, KeyError):
        return {}  # missing or unreadable cache: recompute


def _save_cache(file: Path, entries: dict[str, tuple[int, int, str, np.ndarray]]) -> None:
    from medtransfer.atomic import atomic_write

    names = sorted(entries)
    file.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "names": np.array(names),
        "sizes": np.array([entries[n][0] for n in names], dtype=np.int64),
        "mtimes": np.array([entries[n][1] for n in names], dtype=np.int64),
        "hashes": np.array([entries[n][2] for n in names]),
        "thumbnails": np.stack([entries[n][3] for n in names]),
    }
    atomic_write(file, lambda stream: np.savez(stream, **arrays))


def fingerprints(paths: Sequence[str | os.PathLike], cache: bool = True) -> Fingerprints:
    """Fingerprints of `paths` (image files or DICOM folders), read from / written to the per-folder cache."""
    resolved = [Path(p).resolve() for p in paths]
    results: dict[Path, tuple[str, np.ndarray]] = {}
    by_folder: dict[Path, list[Path]] = {}
    for path in resolved:
        if not path.exists():
            raise DuplicateCheckError(f"{path}: file not found")
        by_folder.setdefault(path.parent, []).append(path)
    for folder, members in by_folder.items():
        cache_file = _cache_folder() / f"{hashlib.sha256(str(folder).encode()).hexdigest()[:20]}.npz"
        entries = _load_cache(cache_file) if cache else {}
        changed = False
        for path in members:
            size, mtime = _stat_key(path)
            entry = entries.get(path.name)
            if entry is not None and entry[0] == size and entry[1] == mtime:
                results[path] = (entry[2], entry[3])
                continue
            digest, thumbnail = fingerprint_file(path)
            results[path] = (digest, thumbnail)
            entries[path.name] = (size, mtime, digest, thumbnail)
            changed = True
        lengths = {entry[3].size for entry in entries.values()}
        if cache and changed and len(lengths) == 1:  # one thumbnail size per folder (2D or 3D images)
            _save_cache(cache_file, entries)
    lengths = {results[p][1].size for p in resolved}
    if len(lengths) > 1:
        raise DuplicateCheckError("cannot compare 2D images with 3D volumes: the files mix dimensionalities")
    thumbnails = np.stack([results[p][1] for p in resolved]) if resolved else np.zeros((0, 1), np.float32)
    return Fingerprints(tuple(str(p) for p in resolved), tuple(results[p][0] for p in resolved), thumbnails)


# Pairs and groups -------------------------------------------------------------------------------------------
def duplicate_pairs(first: Fingerprints, second: Fingerprints | None = None,
                    threshold: float = CORRELATION_THRESHOLD, block: int = 1024) -> list[tuple[int, int, float]]:
    """(i, j, correlation) of every duplicate pair: exact hash match or correlation > `threshold`.

    Within `first` (second=None): pairs i < j. Across two sets: i indexes `first`, j indexes `second`. Exact
    matches are reported with correlation 1.0 (also for constant images, whose thumbnails are zero)."""
    within = second is None
    second = first if within else second
    if len(first) and len(second) and first.thumbnails.shape[1] != second.thumbnails.shape[1]:
        raise DuplicateCheckError("cannot compare 2D images with 3D volumes (thumbnail sizes differ)")
    found: dict[tuple[int, int], float] = {}
    for start in range(0, len(first), block):
        scores = first.thumbnails[start:start + block] @ second.thumbnails.T
        rows, cols = np.nonzero(scores > threshold)
        for row, col in zip(rows.tolist(), cols.tolist()):
            i = start + row
            if within and col <= i:
                continue
            found[(i, col)] = float(scores[row, col])
    positions: dict[str, list[int]] = {}
    for j, digest in enumerate(second.hashes):
        positions.setdefault(digest, []).append(j)
    for i, digest in enumerate(first.hashes):
        for j in positions.get(digest, []):
            if within and j <= i:
                continue
            found[(i, j)] = 1.0
    return sorted((i, j, c) for (i, j), c in found.items())


def connected_groups(count: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components (of size ≥ 2) of the graph on `count` nodes with edges `pairs`, sorted."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = np.array([(i, j) for i, j, *_ in pairs], dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for node, label in enumerate(labels.tolist()):
        members.setdefault(label, []).append(node)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


@dataclass
class DuplicateSummary:
    """Near-duplicates within one set of cases."""

    ids: list[str]
    pairs: list[tuple[str, str, float]]
    groups: list[list[str]]

    @property
    def images_involved(self) -> int:
        return sum(len(group) for group in self.groups)


def find_duplicates(ids: Sequence[str], paths: Sequence[str | os.PathLike], cache: bool = True) -> DuplicateSummary:
    """Duplicate pairs and groups among cases `ids` whose images are `paths`, in a canonical order (ids sorted
    within a pair and a group, groups by their first id), so the result does not depend on the input order."""
    prints = fingerprints(paths, cache=cache)
    pairs = duplicate_pairs(prints)
    groups = sorted(sorted(ids[i] for i in group) for group in connected_groups(len(ids), pairs))
    named = sorted((min(ids[i], ids[j]), max(ids[i], ids[j]), c) for i, j, c in pairs)
    return DuplicateSummary(list(ids), named, groups)


def cross_split_groups(groups: Iterable[Sequence[str]], split_of: dict[str, str]) -> list[dict[str, list[str]]]:
    """The groups whose members lie in more than one split, as {split: [ids]} (leakage between splits)."""
    leaking = []
    for group in groups:
        by_split: dict[str, list[str]] = {}
        for case_id in group:
            by_split.setdefault(split_of[case_id], []).append(case_id)
        if len(by_split) > 1:
            leaking.append(by_split)
    return leaking
