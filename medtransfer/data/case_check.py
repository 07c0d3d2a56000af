"""`medtransfer data check`: load every case of a manifest the way training does and report what fails, and
find duplicate images that lie in different splits."""

from __future__ import annotations

import json
from collections.abc import Iterator

from medtransfer.data.manifest import SPLITS, Manifest
from medtransfer.data.transforms import eval_transforms
from medtransfer.errors import MedtransferError


def check_cases(manifest: Manifest) -> Iterator[tuple[str, str, str | None]]:
    """Yield (split, case id, error or None) for every case, reading each file once."""
    for split in SPLITS:
        with_label = manifest.has_labels
        load = eval_transforms(manifest.dimensions, manifest.label_map, None, with_label=with_label,
                               channels=manifest.channels)
        for case in manifest.content[split]:
            try:
                load(manifest.case_item(split, case, require_labels=with_label))
            except MedtransferError as error:  # outside the root, damaged, missing: the line names the file
                yield split, case["id"], str(error)
            except Exception as error:  # MONAI wraps reader errors; keep the innermost message, it names the file
                yield split, case["id"], _innermost(error)
            else:
                yield split, case["id"], None


def _innermost(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {error}"


def cross_split_duplicates(manifest: Manifest, cache: bool = True) -> list[dict[str, list[str]]]:
    """Groups of exact or near-duplicate images (medtransfer.data.duplicates' rule) whose members lie in more
    than one split, as {split: [case ids]}: leakage between splits. The groups stored in the manifest count
    too, so a hand-edited split that cuts a stored group is reported even if the images have changed."""
    from medtransfer.data.duplicates import cross_split_groups, find_duplicates

    split_of = {case["id"]: split for split in SPLITS for case in manifest.content[split]}
    items = [item for split in SPLITS for item in manifest.datalist(split, require_labels=False)]
    paths = [item["image"] if isinstance(item["image"], str) else item["image"][0] for item in items]
    found = find_duplicates([item["id"] for item in items], paths, cache=cache)
    groups = found.groups + manifest.near_duplicate_groups
    leaking = cross_split_groups(groups, split_of)
    unique = {json.dumps(group, sort_keys=True): group for group in leaking}
    return list(unique.values())
