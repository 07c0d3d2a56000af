"""`medtransfer data check`: load every case of a manifest the way training does and report what fails."""

from __future__ import annotations

from collections.abc import Iterator

from medtransfer.data.manifest import SPLITS, Manifest, ManifestError
from medtransfer.data.transforms import eval_transforms


def check_cases(manifest: Manifest) -> Iterator[tuple[str, str, str | None]]:
    """Yield (split, case id, error or None) for every case, reading each file once."""
    for split in SPLITS:
        with_label = manifest.has_labels
        load = eval_transforms(manifest.dimensions, manifest.label_map, None, with_label=with_label)
        for case in manifest.content[split]:
            try:
                item = manifest.datalist(split, require_labels=with_label)
                item = next(entry for entry in item if entry["id"] == case["id"])
                load(item)
            except ManifestError as error:
                yield split, case["id"], str(error)
            except Exception as error:  # MONAI wraps reader errors; keep the innermost message, it names the file
                yield split, case["id"], _innermost(error)
            else:
                yield split, case["id"], None


def _innermost(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {error}"
