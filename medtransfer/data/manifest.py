"""Data manifests: an MSD-style datalist plus the facts a study needs (splits, nested fractions, licence).

A manifest is a JSON file (see `data_manifests/`). Paths inside are relative to a data root given at run
time (`--data_root` / `MEDTRANSFER_DATA`), so the same manifest serves every machine. Fractions are fixed in
the file: nested, seeded subsets of the training ids, so every study and every seed uses the same cases.
"""

from __future__ import annotations

from medtransfer.errors import MedtransferError

import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("training", "validation", "test")
DEFAULT_FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)
REQUIRED_KEYS = ("name", "dimensions", "training", "validation", "test", "fractions")


class ManifestError(MedtransferError, ValueError):
    """A manifest or one of its cases is unusable; the message names the file and the problem."""


def fraction_key(fraction: float | str) -> str:
    """Canonical text form of a fraction ("0.1", "1.0"), the key used in the manifest's `fractions`."""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise ManifestError(f"fraction must be a number, got {fraction!r}") from None
    return repr(value)


def nested_fractions(ids: list[str], fractions=DEFAULT_FRACTIONS, seed: int = 0) -> dict[str, list[str]]:
    """Nested subsets of `ids`: one seeded permutation, each fraction takes its first ceil(f·N) ids.

    Nesting (0.05 ⊂ 0.1 ⊂ …) makes curves over fractions comparable: adding data never removes a case.
    Every subset has at least one case.
    """
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    subsets = {}
    for fraction in sorted(float(f) for f in fractions):
        if not 0 < fraction <= 1:
            raise ManifestError(f"fractions must lie in (0, 1], got {fraction}")
        count = max(1, math.ceil(round(fraction * len(order), 6)))
        subsets[fraction_key(fraction)] = sorted(order[:count])
    return subsets


@dataclass
class Manifest:
    """A loaded, validated manifest bound to a data root."""

    path: Path | None
    content: dict[str, Any]
    data_root: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.content["name"]

    @property
    def dimensions(self) -> int:
        return int(self.content["dimensions"])

    @property
    def label_map(self) -> dict[int, int] | None:
        mapping = self.content.get("label_map")
        return {int(k): int(v) for k, v in mapping.items()} if mapping else None

    @property
    def channels(self) -> int:
        """Input channels of every image (1 grey, 3 RGB, or the sequences of a multi-channel scan)."""
        return int(self.content.get("channels", 1))

    @property
    def near_duplicate_groups(self) -> list[list[str]]:
        return [list(group) for group in self.content.get("near_duplicate_groups") or []]

    @property
    def target_spacing(self) -> list[float] | None:
        return self.content.get("target_spacing")

    @property
    def fractions(self) -> list[str]:
        return sorted(self.content["fractions"], key=float)

    @property
    def has_labels(self) -> bool:
        return all("label" in case for split in SPLITS for case in self.content[split])

    def _where(self) -> str:
        return str(self.path) if self.path else f"manifest {self.name!r}"

    def case_ids(self, split: str, fraction: float | str | None = None) -> list[str]:
        """Ids of a split; for the training split, optionally only those of a fraction."""
        if split not in SPLITS:
            raise ManifestError(f"unknown split {split!r}; one of {SPLITS}")
        ids = [case["id"] for case in self.content[split]]
        if fraction is None or split != "training":
            return ids
        key = fraction_key(fraction)
        if key not in self.content["fractions"]:
            raise ManifestError(
                f"{self._where()}: fraction {fraction} is not in the manifest; available: {', '.join(self.fractions)}"
            )
        return list(self.content["fractions"][key])

    def datalist(self, split: str, fraction: float | str | None = None, require_labels: bool = True) -> list[dict]:
        """MONAI datalist (dicts with absolute `image`/`label` paths and the case `id`) of a split/fraction.

        With `require_labels=False` the items hold images only (self-supervised objectives ignore labels).

        Every referenced file is checked here to lie inside the data root (symlinks resolved; `data.paths`), to
        exist, to be non-empty and to have a header that agrees with its size (`data.damaged`), so a wrong data
        root, an escaping path or a damaged file fails at once with the path, not deep inside a data loader.
        """
        wanted = set(self.case_ids(split, fraction))
        return [self.case_item(split, case, require_labels) for case in self.content[split] if case["id"] in wanted]

    def case_item(self, split: str, case: dict, require_labels: bool = True) -> dict:
        """The datalist item of one case of `split` (its files checked as `datalist` says)."""
        item = {"id": case["id"]}
        for key in ("image", "label") if require_labels else ("image",):  # unsupervised use: images only
            if key not in case:
                raise ManifestError(f"{self._where()}: case {case['id']!r} in {split} has no {key!r}")
            if isinstance(case[key], list):  # one file per channel (nnU-Net layout)
                item[key] = [str(self._existing(path, case["id"], f"{split} case {case['id']!r} {key}[{index}]"))
                             for index, path in enumerate(case[key])]
            else:
                item[key] = str(self._existing(case[key], case["id"], f"{split} case {case['id']!r} {key}"))
        if "class" in case:
            item["class"] = case["class"]
        return item

    def _existing(self, relative: str, case_id: str, key: str) -> Path:
        """The file of one manifest entry: inside the data root (symlinks resolved), present, non-empty, and with
        a header that agrees with the file (`medtransfer.data.damaged`), all before any pixel is read."""
        from medtransfer.data.damaged import check_image_file
        from medtransfer.data.paths import confined

        path = confined(self.data_root, relative, key, self._where())
        if not path.exists():
            raise ManifestError(
                f"{self._where()}: case {case_id!r}: file not found: {path} (data root: {self.data_root}; "
                "set --data_root or MEDTRANSFER_DATA to the folder the manifest's paths are relative to)"
            )
        if path.is_file() and path.stat().st_size == 0:
            raise ManifestError(f"{self._where()}: case {case_id!r}: empty file: {path}")
        check_image_file(path, self.data_root)
        return path


def _check_types(content: Any, where: str) -> None:
    """Wrong JSON types (a string where a list belongs, a number as a path) as one error naming the key."""
    if not isinstance(content, dict):
        raise ManifestError(f"{where}: a manifest is a JSON object, got {type(content).__name__}")
    for split in SPLITS:
        cases = content.get(split, [])
        if not isinstance(cases, list):
            raise ManifestError(f"{where}: {split!r} must be a list of cases, got {type(cases).__name__}")
        for index, case in enumerate(cases):
            if not isinstance(case, dict):
                raise ManifestError(f"{where}: {split}[{index}] must be an object with 'id' and 'image'")
            for key in ("id", "image", "label"):
                value = case.get(key)
                # a multi-channel image (nnU-Net channel_names) is one file per channel: a list of paths
                several = key == "image" and isinstance(value, list) and value and all(isinstance(v, str) for v in value)
                if key in case and not isinstance(value, str) and not several:
                    raise ManifestError(f"{where}: {split}[{index}].{key} must be a string (a path or an id"
                                        f"{', or for image a list of per-channel paths' if key == 'image' else ''}), "
                                        f"got {value!r}")
    fractions = content.get("fractions", {})
    if not isinstance(fractions, dict) or not all(isinstance(v, list) for v in fractions.values()):
        raise ManifestError(f"{where}: 'fractions' must map fractions to lists of training ids")
    if "dimensions" in content and (isinstance(content["dimensions"], bool) or content["dimensions"] not in (2, 3)):
        raise ManifestError(f"{where}: dimensions must be 2 or 3, got {content['dimensions']!r}")
    label_map = content.get("label_map")
    if label_map is not None and (not isinstance(label_map, dict) or not all(
            str(k).lstrip("-").isdigit() and not isinstance(v, bool) and isinstance(v, int) for k, v in label_map.items())):
        raise ManifestError(f"{where}: label_map must map integer label values onto 0 or 1, got {label_map!r}")
    if label_map and set(label_map.values()) <= {0, 1} and 1 not in label_map.values():
        raise ManifestError(f"{where}: label_map maps every value to 0 (background); map at least one value to 1")


def validate_content(content: dict, where: str) -> None:
    """Structural checks of a manifest (not of the image files: see `medtransfer.data.checks`)."""
    _check_types(content, where)
    missing = [key for key in REQUIRED_KEYS if key not in content]
    if missing:
        raise ManifestError(f"{where}: missing key(s) {missing}")
    if content["dimensions"] not in (2, 3):
        raise ManifestError(f"{where}: dimensions must be 2 or 3, got {content['dimensions']!r}")
    seen: dict[str, str] = {}
    for split in SPLITS:
        for index, case in enumerate(content[split]):
            if "id" not in case or "image" not in case:
                raise ManifestError(f"{where}: {split}[{index}] needs 'id' and 'image'")
            if case["id"] in seen:
                raise ManifestError(f"{where}: case id {case['id']!r} appears in {seen[case['id']]} and {split}")
            seen[case["id"]] = split
    training = {case["id"] for case in content["training"]}
    previous: set[str] = set()
    for key in sorted(content["fractions"], key=float):
        subset = set(content["fractions"][key])
        if not subset <= training:
            raise ManifestError(f"{where}: fraction {key} lists ids not in training: {sorted(subset - training)[:5]}")
        if not previous <= subset:
            raise ManifestError(f"{where}: fractions are not nested: {key} misses {sorted(previous - subset)[:5]}")
        previous = subset
    channels = content.get("channels", 1)
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ManifestError(f"{where}: channels must be a positive integer, got {channels!r}")
    for index, group in enumerate(content.get("near_duplicate_groups") or []):
        unknown = [case_id for case_id in group if case_id not in seen]
        if unknown:
            raise ManifestError(f"{where}: near_duplicate_groups[{index}] names unknown case ids {unknown[:5]}")
    if content.get("label_map") is not None:
        values = set(content["label_map"].values())
        if not values <= {0, 1}:
            raise ManifestError(f"{where}: label_map must map onto {{0, 1}}, got target values {sorted(values)}")


def read_manifest_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    try:
        content = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: not valid JSON ({error})") from None
    except OSError as error:
        raise ManifestError(f"{path}: cannot read the manifest ({error.strerror or error})") from None
    validate_content(content, str(path))
    return content
