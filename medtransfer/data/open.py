"""Open a manifest by path or by name and bind it to a data root (generating the synthetic default)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from medtransfer import registry
from medtransfer.data.manifest import Manifest, ManifestError, read_manifest_file


def find_manifest(name_or_path: str | os.PathLike) -> Path:
    """A manifest path, or a bare name (`synthetic_2d`) looked up in ./data_manifests and the project's folder."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".json" or candidate.exists():
        if not candidate.is_file():
            raise ManifestError(f"manifest not found: {candidate}")
        return candidate
    local = Path.cwd() / "data_manifests" / f"{name_or_path}.json"
    if local.is_file():
        return local
    packaged = registry.manifest_path(str(name_or_path))
    if packaged is not None:
        return packaged
    raise ManifestError(
        f"no manifest named {str(name_or_path)!r} in ./data_manifests or {registry.manifests_dir()} "
        f"(packaged: {', '.join(registry.manifest_names())}); give a path to a .json file"
    )


def _collection_member(content: dict, root: Path) -> Path:
    """`root`, or its subfolder named like the manifest when `root` is a collection of data sets.

    A folder of data sets (``shared/data/`` with ``busbra_breast_us_lesions/``, ``busi_breast_us_lesions/``,
    ...) then serves as the data root of every manifest named after one of its folders, so that one
    ``--data-root`` works for a study whose source and target are different data sets. Only taken when the
    manifest's first file is missing under `root` itself and present under the subfolder.
    """
    first = next((case.get("image") for split in ("training", "validation", "test")
                  for case in content.get(split) or [] if isinstance(case, dict) and case.get("image")), None)
    member = root / str(content.get("name", ""))
    if (isinstance(first, str) and content.get("name") and not (root / first).exists()
            and (member / first).exists()):
        return member
    return root


def _resolve_data_root(content: dict, manifest_path: Path, data_root: str | os.PathLike | None) -> Path:
    if data_root:
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise ManifestError(f"data root for {manifest_path} is not a folder: {root}")
        return _collection_member(content, root).resolve()
    generator = content.get("generator")
    if generator:  # the embedded default: generated deterministically on first use, then cached
        from medtransfer.data.synthetic import ensure_synthetic_dataset

        return ensure_synthetic_dataset(
            dimensions=int(generator["dimensions"]),
            num_cases=int(generator["num_cases"]),
            shape=tuple(generator["shape"]),
            seed=int(generator.get("seed", 0)),
        )
    env_root = os.environ.get("MEDTRANSFER_DATA")
    if env_root:
        return _resolve_data_root(content, manifest_path, env_root)
    raise ManifestError(
        f"{manifest_path}: no data root given; pass --data_root (bundle) / --data-root (CLI) or set MEDTRANSFER_DATA "
        f"to the folder holding the files the manifest names (e.g. {content['training'][0]['image']})"
    )


def open_manifest(
    path: str | os.PathLike, data_root: str | os.PathLike | None = None, dimensions: int | None = None
) -> Manifest:
    """Load and validate a manifest, bind it to its data root, and check it suits a `dimensions`-D network."""
    manifest_path = find_manifest(path)
    content = read_manifest_file(manifest_path)
    if dimensions is not None and int(content["dimensions"]) != int(dimensions):
        raise ManifestError(
            f"{manifest_path}: the data set is {content['dimensions']}D but the bundle trains a {dimensions}D network; "
            f"use the binary_seg_{content['dimensions']}d bundle"
        )
    root = _resolve_data_root(content, manifest_path, data_root)
    return Manifest(path=manifest_path.resolve(), content=content, data_root=root)


def manifest_identity(path: str | os.PathLike | None) -> str | None:
    """``<name>@<sha256 of the content, 12 hex>`` of a manifest (found like find_manifest), None for None.

    What a run's parameters record of a manifest it only reads (the transferability target): its identity, not the
    path it was read from, so that a study moved to another checkout or data folder still resumes, and a changed
    manifest is a changed run."""
    if path is None:
        return None
    content = read_manifest_file(find_manifest(path))
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]
    return f"{content.get('name', Path(path).stem)}@{digest}"
