"""Find the scans to segment in a folder: image files, and sub-folders holding a DICOM series."""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd", ".png")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def is_dicom_file(path: Path) -> bool:
    """By suffix, or by the Part-10 preamble ("DICM" at byte 128) for files exported without one."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as stream:
            return stream.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _is_dicom_folder(folder: Path) -> bool:
    return any(is_dicom_file(p) for p in folder.iterdir() if p.is_file())


def list_inputs(input_dir: str | Path) -> list[dict]:
    """MONAI datalist `[{"image": path}, ...]` for every image file or DICOM-series folder under `input_dir`.

    A single file is accepted too. The order is sorted so outputs are reproducible.
    """
    root = Path(input_dir)
    if root.is_file():
        return [{"image": str(root)}]
    if not root.is_dir():
        raise FileNotFoundError(f"input not found: {root}")
    items = [{"image": str(p)} for p in sorted(root.iterdir()) if p.is_file() and p.name.endswith(IMAGE_SUFFIXES)]
    if _is_dicom_folder(root):
        items.append({"image": str(root)})
    items += [{"image": str(p)} for p in sorted(root.iterdir()) if p.is_dir() and _is_dicom_folder(p)]
    if not items:
        raise FileNotFoundError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) and no DICOM series folders")
    return items
