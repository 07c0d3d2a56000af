"""Pictures of `segment`'s results for people without a viewer: one PNG per scan and an index.html listing them.

3D: the mask's outline over three orthogonal slices (axial, coronal, sagittal) through the mask's centre of mass,
after reorienting to RAS so every scan looks the same way round, with each panel's aspect ratio from the voxel
spacing. 2D: the image with its outline. Drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import html
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from medtransfer.atomic import atomic_write  # noqa: E402

OUTLINE_COLOUR = "#ff3030"
INDEX_NAME = "index.html"


def _window(image: np.ndarray) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [0.5, 99.5])
    return float(low), float(high if high > low else low + 1)


def _centre(mask: np.ndarray) -> list[int]:
    if mask.any():
        return [int(round(c)) for c in ndimage.center_of_mass(mask > 0)]
    return [s // 2 for s in mask.shape]


def _panel(ax, image: np.ndarray, mask: np.ndarray, aspect: float, title: str, window) -> None:
    # Arrays are (horizontal, vertical); imshow wants (rows, columns) with the origin at the bottom.
    ax.imshow(image.T, cmap="gray", origin="lower", vmin=window[0], vmax=window[1], aspect=aspect,
              interpolation="nearest")
    if mask.any():
        ax.contour(mask.T.astype(float), levels=[0.5], colors=OUTLINE_COLOUR, linewidths=1.2, origin="lower")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _figure_3d(image: np.ndarray, mask: np.ndarray, affine: np.ndarray, title: str):
    orientation = nib.orientations.io_orientation(affine)
    image = nib.orientations.apply_orientation(image, orientation)
    mask = nib.orientations.apply_orientation(mask, orientation)
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))[orientation[:, 0].astype(int)]
    window = _window(image)
    x, y, z = _centre(mask)
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    _panel(axes[0], image[:, :, z], mask[:, :, z], spacing[1] / spacing[0], f"axial z={z} (R right, A up)", window)
    _panel(axes[1], image[:, y, :], mask[:, y, :], spacing[2] / spacing[0], f"coronal y={y} (R right, S up)", window)
    _panel(axes[2], image[x, :, :], mask[x, :, :], spacing[2] / spacing[1], f"sagittal x={x} (A right, S up)",
           window)
    figure.suptitle(title, fontsize=11)
    return figure


def _figure_2d(image: np.ndarray, mask: np.ndarray, affine: np.ndarray, title: str):
    spacing = np.sqrt((np.asarray(affine)[:2, :2] ** 2).sum(axis=0))
    figure, ax = plt.subplots(1, 1, figsize=(6, 6 * image.shape[1] / max(image.shape[0], 1) + 0.6))
    # Image arrays read by MONAI are (x, y) with y downwards in the file: show them as the file shows them.
    ax.imshow(image.T, cmap="gray", vmin=_window(image)[0], vmax=_window(image)[1], aspect=spacing[1] / spacing[0],
              interpolation="nearest")
    if mask.any():
        ax.contour(mask.T.astype(float), levels=[0.5], colors=OUTLINE_COLOUR, linewidths=1.2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=11)
    return figure


def write_preview(path: str | os.PathLike, image: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                  title: str = "") -> Path:
    """A PNG of ``mask``'s outline over ``image`` (same grid; 2D or 3D; ``affine`` gives spacing/orientation)."""
    image, mask = np.asarray(image, dtype=np.float32), np.asarray(mask)
    if image.shape != mask.shape or image.ndim not in (2, 3):
        raise ValueError(f"{path}: preview needs a 2D or 3D image and mask of one shape, got {image.shape} / "
                         f"{mask.shape}")
    figure = (_figure_3d if image.ndim == 3 else _figure_2d)(image, mask, affine, title)
    stream = io.BytesIO()
    figure.savefig(stream, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = stream.getvalue()
    atomic_write(path, lambda handle: handle.write(data))
    return path


def _relative(path: str | None, output: Path) -> str | None:
    if not path:
        return None
    try:
        return Path(path).resolve().relative_to(output.resolve()).as_posix()
    except ValueError:
        return None


def write_index(output: str | os.PathLike, results: Sequence, previews: Mapping[str, str]) -> Path:
    """``index.html``: one row per scan (status, volume or area, error) with its preview and mask, linked relatively."""
    output = Path(output)
    rows = []
    for result in results:
        preview = previews.get(result.scan)
        size = (
            f"{result.volume_ml:.2f} mL" if result.volume_ml is not None
            else f"{result.n_voxels} pixels" if result.n_voxels is not None else ""
        )
        links = [
            f'<a href="{html.escape(link)}">{html.escape(Path(link).name)}</a>'
            for link in (_relative(result.output_nifti, output), _relative(result.output_dicom_seg, output)) if link
        ]
        picture = (
            f'<a href="{html.escape(preview)}"><img src="{html.escape(preview)}" alt="{html.escape(result.scan)}" '
            f'width="480"></a>' if preview else ""
        )
        detail = html.escape(result.error or "")
        rows.append(
            f"<tr class=\"{html.escape(result.status)}\"><td>{html.escape(result.scan)}</td>"
            f"<td>{html.escape(result.status)}</td><td>{size}</td><td>{' '.join(links)}</td><td>{picture}</td>"
            f"<td>{detail}</td></tr>"
        )
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>medtransfer segment results</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
        "tr.failed{background:#fee}table{border-collapse:collapse}</style></head><body>\n"
        f"<h1>Segmentation results ({sum(r.ok for r in results)} of {len(results)} scans segmented)</h1>\n"
        "<p>Research use only: check every mask before relying on it. Outline: red.</p>\n"
        "<table><tr><th>scan</th><th>status</th><th>volume / area</th><th>mask</th><th>preview</th>"
        "<th>error</th></tr>\n"
        + "\n".join(rows) + "\n</table></body></html>\n"
    )
    path = output / INDEX_NAME
    data = page.encode()
    atomic_write(path, lambda handle: handle.write(data))
    return path
