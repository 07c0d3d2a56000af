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


def _image_information(path: Path):
    """A SimpleITK reader holding the file's header (size, components), without reading the pixels."""
    import SimpleITK as sitk  # the header reader only where a manifest is built

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ManifestError(f"{path}: unreadable image ({str(error).strip().splitlines()[-1]})") from None
    return reader


def detect_dimensions(path: Path) -> int:
    """2 or 3 from the file header (trailing singleton axes ignored)."""
    if path.name.endswith(".png"):
        return 2
    reader = _image_information(path)
    size = [s for s in reader.GetSize()]
    while len(size) > 2 and size[-1] == 1:
        size.pop()
    return len(size)


def split_ids(ids: list[str], test_fraction: float, validation_fraction: float, seed: int, ordered: bool,
              groups: list[list[str]] | None = None):
    """(training, validation, test). `ordered` keeps file order (test = last cases) for serial sections.

    `groups` (patients, near-duplicate images) are kept whole: every member of a group lands in one split. Ids
    in no group are groups of one; with no groups at all the split is the plain seeded split of the ids."""
    for name, value in (("test_fraction", test_fraction), ("validation_fraction", validation_fraction)):
        if not 0 <= value < 1:  # NaN fails too
            raise ManifestError(f"{name} {value} is outside [0, 1): the share of the cases held out, e.g. 0.2")
    order = sorted(ids)
    n_test = math.floor(len(order) * test_fraction + 0.5)
    n_val = max(1, math.floor(len(order) * validation_fraction + 0.5)) if validation_fraction > 0 else 0
    if len(order) - n_test - n_val < 1:
        raise ManifestError(f"too few cases ({len(order)}) for a training split: test_fraction {test_fraction} and "
                            f"validation_fraction {validation_fraction} hold out {n_test} + {n_val}; their sum must "
                            f"leave at least one training case")
    units = _split_units(order, groups or [])
    if ordered:  # serial sections: test = the last units, validation the ones before
        units.reverse()
    else:
        random.Random(seed).shuffle(units)
    test, rest = _fill(units, n_test, contiguous=ordered)
    validation, rest = _fill(rest, n_val, contiguous=ordered)
    training = [case for unit in rest for case in unit]
    if not training:
        raise ManifestError(f"too few cases ({len(order)}) or too large groups for a training split")
    return sorted(training), sorted(validation), sorted(test)


def _split_units(order: list[str], groups: list[list[str]]) -> list[list[str]]:
    """Groups of ids (sorted by their first id), each id in exactly one; overlapping groups are merged."""
    from medtransfer.data.duplicates import connected_groups

    index = {case: i for i, case in enumerate(order)}
    unknown = sorted({case for group in groups for case in group} - set(index))
    if unknown:
        raise ManifestError(f"groups name unknown case ids: {unknown[:5]}")
    edges = [(index[group[0]], index[case]) for group in groups for case in group[1:]]
    merged = connected_groups(len(order), edges)
    grouped = {i for group in merged for i in group}
    units = merged + [[i] for i in range(len(order)) if i not in grouped]
    return [[order[i] for i in unit] for unit in sorted(units, key=lambda unit: unit[0])]


def _fill(units: list[list[str]], target: int, contiguous: bool) -> tuple[list[str], list[list[str]]]:
    """Take whole units, in order, until `target` cases are taken; a unit that would overshoot is passed over
    (or, when `contiguous`, ends the run of units taken)."""
    taken: list[str] = []
    rest: list[list[str]] = []
    for position, unit in enumerate(units):
        if len(taken) >= target:
            rest += units[position:]
            break
        if len(taken) + len(unit) <= target or (contiguous and not taken):
            taken += unit
        elif contiguous:
            rest += units[position:]
            break
        else:
            rest.append(unit)
    return taken, rest


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


def _pairs_from_nnunet(folder: Path, dataset: dict) -> tuple[list[dict], dict[str, int] | None, int]:
    """imagesTr/<case>_<XXXX><ending> (one file per channel) + labelsTr/<case><ending>; several foreground
    labels are merged. A case with several channels lists its channel files in order as `image`."""
    ending = dataset.get("file_ending", ".nii.gz")
    channels = dataset.get("channel_names") or dataset.get("modality") or {"0": "image"}
    count = len(channels)
    cases = []
    for label in sorted((folder / "labelsTr").glob(f"*{ending}")):
        name = label.name[: -len(ending)]
        images = [folder / "imagesTr" / f"{name}_{channel:04d}{ending}" for channel in range(count)]
        for image in images:
            if not image.exists():
                raise ManifestError(f"{label}: no image {image} (dataset.json names {count} channel(s))")
        relative = [f"imagesTr/{image.name}" for image in images]
        cases.append({"id": name, "image": relative[0] if count == 1 else relative, "label": f"labelsTr/{label.name}"})
    foreground = {str(v): 1 for k, v in dataset.get("labels", {}).items() if k != "background" and int(v) != 0}
    label_map = foreground if set(foreground) != {"1"} else None
    return cases, label_map, count


def detect_channels(path: Path, dimensions: int) -> int:
    """Channels of one image file: PNG bands (grey 1, RGB 3), or a trailing axis beyond `dimensions`."""
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
        from PIL import Image

        try:
            with Image.open(path) as image:
                bands = len(image.getbands()) if image.mode != "P" else 3
        except OSError as error:
            raise ManifestError(f"{path}: unreadable image ({error})") from None
        if bands == 2:  # grey + alpha: the alpha band is no image content
            bands = 1
        return bands
    reader = _image_information(path)
    size = list(reader.GetSize())
    components = int(reader.GetNumberOfComponents())
    return components if components > 1 else (size[dimensions] if len(size) > dimensions else 1)


def _check_files(folder: Path, cases: list[dict]) -> None:
    """Every file a case names lies inside `folder` once symlinks are resolved (no entry of the manifest may lead
    elsewhere), and its header agrees with its size; checked before any image is read."""
    from medtransfer.data.damaged import check_image_file
    from medtransfer.data.paths import confined

    for case in cases:
        for key in ("image", "label"):
            files = case.get(key)
            for index, relative in enumerate([files] if isinstance(files, str) else files or []):
                name = f"case {case['id']!r} {key}" + (f"[{index}]" if not isinstance(files, str) else "")
                check_image_file(confined(folder, relative, name, str(folder)), folder)


def near_duplicate_groups(folder: Path, cases: list[dict], cache: bool = True):
    """Near-duplicate groups (lists of ids) among `cases`, by `medtransfer.data.duplicates`' rule; a case with
    several channel files is compared by its first channel."""
    from medtransfer.data.duplicates import find_duplicates

    ids = [case["id"] for case in cases]
    paths = [folder / (case["image"] if isinstance(case["image"], str) else case["image"][0]) for case in cases]
    return find_duplicates(ids, paths, cache=cache)


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
    near_duplicates: bool = True,
    groups: list[list[str]] | None = None,
    case_fields: dict[str, dict] | None = None,
    test_ids: list[str] | None = None,
    **metadata,
) -> dict:
    """A manifest dict for `folder` (paths relative to it). Extra keyword arguments become metadata keys.

    The split keeps `groups` (e.g. the images of one patient) and near-duplicate images (`near_duplicates`)
    whole; the near-duplicate groups and their rule are stored under `near_duplicate_groups` /
    `near_duplicate_rule`. `case_fields` adds keys to cases (e.g. a pathology `class`, a `patient`).
    `test_ids` fixes the test split (a data set's official test fold); the rest is split into training and
    validation, `validation_fraction` still counting of all cases."""
    folder = Path(folder)
    nnunet_json = folder / "dataset.json"
    if nnunet_json.is_file() and (folder / "imagesTr").is_dir():
        dataset = json.loads(nnunet_json.read_text())
        cases, detected_map, channels = _pairs_from_nnunet(folder, dataset)
        label_map = label_map or detected_map
        name = name or dataset.get("name") or folder.name
        first = folder / (cases[0]["image"] if channels == 1 else cases[0]["image"][0]) if cases else None
    else:
        cases = _pairs_from_folders(folder, image_dir, label_dir)
        name = name or folder.name
        first = folder / cases[0]["image"]
        channels = None
    if not cases:
        raise ManifestError(f"{folder}: no cases found")
    _check_files(folder, cases)
    dimensions = dimensions or detect_dimensions(first)
    if channels is None:
        channels = detect_channels(first, dimensions)
    for case in cases:
        case.update((case_fields or {}).get(case["id"], {}))
    by_id = {case["id"]: case for case in cases}
    duplicates = near_duplicate_groups(folder, cases) if near_duplicates else None
    keep_together = [*(groups or []), *(duplicates.groups if duplicates else [])]
    if test_ids is None:
        training, validation, test = split_ids(list(by_id), test_fraction, validation_fraction, seed, ordered,
                                               groups=keep_together)
    else:
        test = sorted(test_ids)
        unknown = sorted(set(test) - set(by_id))
        if unknown:
            raise ManifestError(f"{folder}: test ids not among the cases: {unknown[:5]}")
        for group in keep_together:
            inside = set(group) & set(test)
            if inside and inside != set(group):
                raise ManifestError(f"{folder}: the given test split cuts the group {sorted(group)} "
                                    f"(in test: {sorted(inside)})")
        rest = sorted(set(by_id) - set(test))
        training, validation, _ = split_ids(rest, 0.0, validation_fraction * len(by_id) / len(rest), seed, ordered,
                                            groups=[g for g in keep_together if not set(g) & set(test)])
    content = {
        "name": name,
        "dimensions": dimensions,
        "channels": channels,
        **metadata,
        "split_seed": seed,
        "training": [by_id[i] for i in training],
        "validation": [by_id[i] for i in validation],
        "test": [by_id[i] for i in test],
        "fractions": nested_fractions(training, fractions, seed),
    }
    if duplicates is not None:
        from medtransfer.data.duplicates import RULE

        content["near_duplicate_rule"] = RULE
        content["near_duplicate_groups"] = duplicates.groups
    if label_map:
        content["label_map"] = {str(k): int(v) for k, v in label_map.items()}
    validate_content(content, f"manifest built for {folder}")
    return content
