"""Derive a 2D (slice) data set and manifest from a 3D manifest, keeping every volume's slices together.

Why: the 2D bundle and a 2D study need 2D cases; cutting volumes into slices must not leak a patient across
splits or fractions. Every slice inherits the split of its volume, and fraction f holds all slices of the
volumes in the 3D manifest's fraction f, so "5 % of the labelled data" still means 5 % of the *patients*
(nested exactly as in the 3D manifest).

Slices are taken after reorientation to RAS (as the 3D pipeline does), along `axis` (0 = sagittal,
1 = coronal, 2 = axial), and written as 2D NIfTI whose affine keeps the slice's world position. Training and
validation keep only slices with foreground by default (with `keep_empty` all are kept); the test split keeps
EVERY slice, so that a volume's Dice can be reassembled from its slices with the false positives on slices
without foreground (`medtransfer.evaluation.metrics.volume_dice`; each entry names its `volume` and `slice`).
Intensities and label values are copied unchanged; the 3D manifest's `label_map` is carried over.

    medtransfer data slices msd_hippocampus --data-root DATA/msd_hippocampus --out DATA/msd_hippocampus_2d
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from medtransfer.atomic import atomic_write, save_json
from medtransfer.data.manifest import ManifestError, fraction_key

SPLITS = ("training", "validation", "test")
AXIS_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}


def _slice_affine(affine: np.ndarray, axis: int, index: int) -> np.ndarray:
    """4×4 affine of slice `index`: in-plane columns first, the slice axis third, origin moved to the slice."""
    in_plane = [a for a in range(3) if a != axis]
    out = np.eye(4)
    out[:3, 0] = affine[:3, in_plane[0]]
    out[:3, 1] = affine[:3, in_plane[1]]
    out[:3, 2] = affine[:3, axis]
    out[:3, 3] = affine[:3, 3] + index * affine[:3, axis]
    return out


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    import gzip

    data = nib.Nifti1Image(array, affine).to_bytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=1, mtime=0)
    atomic_write(path, lambda stream: stream.write(data))


def _foreground(label: np.ndarray, label_map: dict | None) -> np.ndarray:
    if label_map:
        foreground = np.zeros(label.shape, bool)
        for value, target in label_map.items():
            if int(target) != 0:
                foreground |= label == int(value)
        return foreground
    return label > 0


def slice_manifest(manifest, out_dir: str | Path, axis: int = 2, keep_empty: bool = False,
                   name: str | None = None) -> Path:
    """Write slices of every labelled case of `manifest` (a `Manifest` with its data root) under `out_dir` and
    the 2D manifest `out_dir/<name>.json`; returns its path. Re-running with the same inputs reuses the files."""
    import nibabel as nib

    if manifest.dimensions != 3:
        raise ManifestError(f"{manifest.name}: slicing needs a 3D manifest, this one is {manifest.dimensions}D")
    if axis not in AXIS_NAMES:
        raise ManifestError(f"axis must be 0, 1 or 2 (sagittal, coronal, axial), got {axis}")
    if manifest.channels != 1:
        raise ManifestError(f"{manifest.name}: slicing supports single-channel volumes; this one has "
                            f"{manifest.channels} channels")
    out_dir = Path(out_dir)
    name = name or f"{manifest.name}_2d_{AXIS_NAMES[axis]}"
    manifest_path = out_dir / f"{name}.json"
    source_digest = hashlib.sha256(json.dumps({k: manifest.content[k] for k in (*SPLITS, "fractions")},
                                              sort_keys=True).encode()).hexdigest()[:16]
    recipe = {"source_manifest": manifest.name, "source_digest": source_digest, "axis": axis,
              "keep_empty": keep_empty, "test_keeps_empty": True}
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text())
        if previous.get("derived_from") == recipe:
            return manifest_path
        raise ManifestError(f"{manifest_path} exists and was derived differently ({previous.get('derived_from')}); "
                            "choose another --out or remove it")
    label_map = manifest.label_map
    slices_of: dict[str, list[str]] = {}
    content_splits: dict[str, list[dict]] = {}
    for split in SPLITS:
        entries = []
        for item in manifest.datalist(split):
            image = nib.as_closest_canonical(nib.load(item["image"]))
            label = nib.as_closest_canonical(nib.load(item["label"]))
            if image.shape != label.shape:
                raise ManifestError(f"{item['image']}: image shape {image.shape} ≠ label shape {label.shape} "
                                    f"({item['label']})")
            image_data, label_data = np.asanyarray(image.dataobj), np.asanyarray(label.dataobj)
            keep = _foreground(label_data, label_map).any(axis=tuple(a for a in range(3) if a != axis))
            ids = []
            for index in range(image.shape[axis]):
                if not keep[index] and not keep_empty and split != "test":  # test: every slice (volume Dice)
                    continue
                slice_id = f"{item['id']}_{AXIS_NAMES[axis][0]}{index:03d}"
                affine = _slice_affine(image.affine, axis, index)
                for key, data in (("images", image_data), ("labels", label_data)):
                    target = out_dir / key / f"{slice_id}.nii.gz"
                    if not target.exists():
                        _save_nifti(np.ascontiguousarray(np.take(data, index, axis=axis)), affine, target)
                entries.append({"id": slice_id, "image": f"images/{slice_id}.nii.gz",
                                "label": f"labels/{slice_id}.nii.gz", "volume": item["id"], "slice": index})
                ids.append(slice_id)
            slices_of[item["id"]] = ids
        content_splits[split] = entries
    fractions = {fraction_key(key): [s for volume in volumes for s in slices_of.get(volume, [])]
                 for key, volumes in manifest.content["fractions"].items()}
    kept = "all slices" if keep_empty else "training/validation: slices with foreground only; test: all slices"
    content = {
        "name": name,
        "dimensions": 2,
        **{k: manifest.content[k] for k in ("modality", "license", "source", "citation", "label_meaning")
           if k in manifest.content},
        "notes": (f"{AXIS_NAMES[axis]} slices of {manifest.name} ({kept}); each slice keeps its volume's split "
                  "and fractions hold all slices of the 3D manifest's volumes in that fraction (nested by patient). "
                  "Written by medtransfer data slices."),
        "derived_from": recipe,
        "split_seed": manifest.content.get("split_seed", 0),
        **content_splits,
        "fractions": fractions,
    }
    if label_map:
        content["label_map"] = {str(k): int(v) for k, v in label_map.items()}
    save_json(manifest_path, content)
    return manifest_path
