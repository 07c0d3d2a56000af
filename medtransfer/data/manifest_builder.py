"""Build a manifest for a user's own folder: `images/` + `labels/`, or an nnU-Net v2 raw data set.

Splits are seeded and written into the file, as are the nested training fractions, so that the manifest,
not the code, defines which cases every later study uses.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from medtransfer.data.manifest import DEFAULT_FRACTIONS, ManifestError, nested_fractions, validate_content

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".png", ".mha", ".nrrd")


def case_id(filename: str) -> str:
    for suffix in IMAGE_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return Path(filename).stem


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(IMAGE_SUFFIXES))


def detect_dimensions(path: Path) -> int:
    """2 or 3 from the file header (trailing singleton axes ignored)."""
    if path.name.endswith(".png"):
        return 2
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ManifestError(f"{path}: unreadable image ({str(error).strip().splitlines()[-1]})") from None
    size = [s for s in reader.GetSize()]
    while len(size) > 2 and size[-1] == 1:
        size.pop()
    return len(size)


def split_ids(ids: list[str], test_fraction: float, validation_fraction: float, seed: int, ordered: bool):
    """(training, validation, test). `ordered` keeps file order (test = last cases) for serial sections."""
    for name, value in (("test_fraction", test_fraction), ("validation_fraction", validation_fraction)):
        if not 0 <= value < 1:  # NaN fails too
            raise ManifestError(f"{name} {value} is outside [0, 1): the share of the cases held out, e.g. 0.2")
    order = sorted(ids)
    if not ordered:
        random.Random(seed).shuffle(order)
    n_test = math.floor(len(order) * test_fraction + 0.5)
    n_val = max(1, math.floor(len(order) * validation_fraction + 0.5)) if validation_fraction > 0 else 0
    if len(order) - n_test - n_val < 1:
        raise ManifestError(f"too few cases ({len(order)}) for a training split: test_fraction {test_fraction} and "
                            f"validation_fraction {validation_fraction} hold out {n_test} + {n_val}; their sum must "
                            f"leave at least one training case")
    if ordered:
        training, validation, test = order[: -n_test - n_val], order[-n_test - n_val : -n_test], order[-n_test:]
    else:
        test, validation, training = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return sorted(training), sorted(validation), sorted(test)


def _pairs_from_folders(folder: Path, image_dir: str, label_dir: str | None) -> list[dict]:
    images_folder = folder / image_dir
    if not images_folder.is_dir():
        raise ManifestError(f"{folder}: no {image_dir}/ folder")
    labels_folder = folder / label_dir if label_dir else None
    cases = []
    for image in _image_files(images_folder):
        case = {"id": case_id(image.name), "image": f"{image_dir}/{image.name}"}
        if labels_folder is not None:
            label = labels_folder / image.name
            if not label.exists():
                raise ManifestError(f"{image}: no label with the same name in {labels_folder}")
            case["label"] = f"{label_dir}/{image.name}"
        cases.append(case)
    if not cases:
        raise ManifestError(f"{images_folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return cases


def _pairs_from_nnunet(folder: Path, dataset: dict) -> tuple[list[dict], dict[str, int] | None]:
    """imagesTr/<case>_0000<ending> + labelsTr/<case><ending>; several foreground labels are merged."""
    ending = dataset.get("file_ending", ".nii.gz")
    channels = dataset.get("channel_names") or dataset.get("modality") or {"0": "image"}
    if len(channels) != 1:
        raise ManifestError(f"{folder}/dataset.json: {len(channels)} input channels; medtransfer expects one")
    cases = []
    for label in sorted((folder / "labelsTr").glob(f"*{ending}")):
        name = label.name[: -len(ending)]
        image = folder / "imagesTr" / f"{name}_0000{ending}"
        if not image.exists():
            raise ManifestError(f"{label}: no image {image}")
        cases.append({"id": name, "image": f"imagesTr/{image.name}", "label": f"labelsTr/{label.name}"})
    foreground = {str(v): 1 for k, v in dataset.get("labels", {}).items() if k != "background" and int(v) != 0}
    label_map = foreground if set(foreground) != {"1"} else None
    return cases, label_map


def build_manifest(
    folder: str | Path,
    name: str | None = None,
    image_dir: str = "images",
    label_dir: str | None = "labels",
    dimensions: int | None = None,
    label_map: dict | None = None,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    fractions=DEFAULT_FRACTIONS,
    seed: int = 0,
    ordered: bool = False,
    **metadata,
) -> dict:
    """A manifest dict for `folder` (paths relative to it). Extra keyword arguments become metadata keys."""
    folder = Path(folder)
    nnunet_json = folder / "dataset.json"
    if nnunet_json.is_file() and (folder / "imagesTr").is_dir():
        dataset = json.loads(nnunet_json.read_text())
        cases, detected_map = _pairs_from_nnunet(folder, dataset)
        label_map = label_map or detected_map
        name = name or dataset.get("name") or folder.name
    else:
        cases = _pairs_from_folders(folder, image_dir, label_dir)
        name = name or folder.name
    dimensions = dimensions or detect_dimensions(folder / cases[0]["image"])
    by_id = {case["id"]: case for case in cases}
    training, validation, test = split_ids(list(by_id), test_fraction, validation_fraction, seed, ordered)
    content = {
        "name": name,
        "dimensions": dimensions,
        **metadata,
        "split_seed": seed,
        "training": [by_id[i] for i in training],
        "validation": [by_id[i] for i in validation],
        "test": [by_id[i] for i in test],
        "fractions": nested_fractions(training, fractions, seed),
    }
    if label_map:
        content["label_map"] = {str(k): int(v) for k, v in label_map.items()}
    validate_content(content, f"manifest built for {folder}")
    return content
