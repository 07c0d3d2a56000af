"""Per-case checks run once when a case is first loaded (before caching), with errors naming the files.

These are the failures users actually hit with their own data: image/label grids that differ, labels that are
not binary, a 2D file in a 3D study, an RGB screenshot where the manifest says grey (`channels`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform

from medtransfer.data.manifest import ManifestError


class CaseError(ManifestError):
    """One case cannot be used; the message names its file(s)."""


def _filename(item) -> str:
    meta = getattr(item, "meta", None) or {}
    return str(meta.get("filename_or_obj", "<in-memory data>"))


def _affine(item) -> np.ndarray | None:
    affine = getattr(item, "affine", None)
    return None if affine is None else np.asarray(affine, dtype=np.float64)


def check_image(image, dimensions: int, channels: int = 1) -> None:
    """The manifest's number of channels, right number of spatial dimensions, finite values."""
    name = _filename(image)
    spatial = tuple(image.shape[1:])
    if len(spatial) != dimensions:
        raise CaseError(
            f"{name}: a {len(spatial)}D image (shape {spatial}) given to a {dimensions}D network; "
            f"use the binary_seg_{len(spatial)}d bundle or a {dimensions}D data set"
        )
    if image.shape[0] != channels:
        kind = "a single-channel (grey) image" if channels == 1 else f"{channels} channels"
        raise CaseError(
            f"{name}: expected {kind}, got {image.shape[0]} channel(s): the data set's manifest (`channels`) and "
            f"the networks trained on it take {channels} (`medtransfer data manifest` reads the channels from the "
            "images; give images with that many channels)"
        )
    if not bool(torch.isfinite(torch.as_tensor(image)).all()):
        raise CaseError(f"{name}: image holds NaN or infinite values")


def check_label(image, label, label_map: Mapping[int, int] | None) -> None:
    """Same grid as the image and only the values the manifest allows (binary, or the keys of label_map)."""
    image_name, label_name = _filename(image), _filename(label)
    if tuple(image.shape[1:]) != tuple(label.shape[1:]):
        raise CaseError(
            f"image/label shape mismatch: {image_name} has shape {tuple(image.shape[1:])}, "
            f"{label_name} has {tuple(label.shape[1:])}"
        )
    image_affine, label_affine = _affine(image), _affine(label)
    if image_affine is not None and label_affine is not None:
        if not np.allclose(image_affine, label_affine, atol=1e-3, rtol=1e-4):
            raise CaseError(
                f"image/label geometry mismatch (affine): {image_name} vs {label_name}:\n"
                f"{np.round(image_affine, 4)}\nvs\n{np.round(label_affine, 4)}"
            )
    values = set(torch.unique(torch.as_tensor(label)).tolist())
    allowed = {0, 1} if not label_map else {0, *label_map}
    if not values <= allowed:
        shown = sorted(int(v) if float(v).is_integer() else v for v in values)
        hint = (
            "add a label_map to the manifest, e.g. \"label_map\": {\"1\": 1, \"2\": 1}"
            if not label_map
            else f"extend the manifest's label_map (it maps {sorted(label_map)})"
        )
        raise CaseError(f"{label_name}: label is not binary: values {shown}; {hint}")
    if label.shape[0] != 1:
        raise CaseError(f"{label_name}: expected a single-channel label map, got {label.shape[0]} channels")


class ValidateCased(MapTransform):
    """Raise a `CaseError` for an unusable case; a no-op otherwise. Place right after loading."""

    def __init__(
        self,
        keys: Sequence[Hashable] = ("image", "label"),
        dimensions: int = 3,
        label_map: Mapping[int, int] | None = None,
        allow_missing_keys: bool = True,
        channels: int = 1,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.dimensions = dimensions
        self.channels = int(channels)
        self.label_map = {int(k): int(v) for k, v in label_map.items()} if label_map else None

    def __call__(self, data):
        check_image(data["image"], self.dimensions, self.channels)
        if "label" in data:
            check_label(data["image"], data["label"], self.label_map)
        return data
