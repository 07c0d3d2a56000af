"""The bundle registry: the one module that knows where medtransfer's bundles and data manifests live and how a
bundle folder is laid out.

Where: the top-level ``bundles/`` and ``data_manifests/`` of a checkout (source tree or editable install), or
the same folders shipped as package data ``medtransfer/_bundles`` and ``medtransfer/_manifests`` by a regular
``pip install`` / wheel (see setup.py). Layout: the MONAI bundle convention plus medtransfer's overlays::

    <bundle>/configs/metadata.json  train.yaml  evaluate.yaml  inference.yaml|json  multi_gpu_train.yaml
    <bundle>/configs/pretrain.yaml (shared wiring) + pretrain/<objective>.yaml   <bundle>/configs/transfer/<strategy>.yaml
    <bundle>/models/model.pt  <bundle>/docs/README.md  <bundle>/LICENSE  <bundle>/scripts/

Every function taking ``bundle`` accepts a bundle folder (any path) or the name of a packaged bundle.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

_PACKAGE_ROOT = Path(str(files("medtransfer")))
_CHECKOUT_ROOT = _PACKAGE_ROOT.parent
# (package data folder of a wheel install, top-level folder of a checkout)
_LOCATIONS = {"bundles": ("_bundles", "bundles"), "manifests": ("_manifests", "data_manifests")}

CONFIGS = "configs"
METADATA = "configs/metadata.json"
TRAIN = "configs/train.yaml"
EVALUATE = "configs/evaluate.yaml"
MULTI_GPU_TRAIN = "configs/multi_gpu_train.yaml"
INFERENCE_NAMES = ("configs/inference.json", "configs/inference.yaml")  # the Zoo convention first
PRETRAIN = "configs/pretrain.yaml"  # the pretraining wiring every objective overlay needs (listed before it)
PRETRAIN_DIR = "configs/pretrain"
TRANSFER_DIR = "configs/transfer"
WEIGHTS = "models/model.pt"
TORCHSCRIPT = "models/model.ts"
ONNX = "models/model.onnx"
MODEL_CARD = "docs/README.md"
LICENSE = "LICENSE"
SCRIPTS = "scripts"
LARGE_FILES = "large_files.yml"


class RegistryError(LookupError):
    """A bundle, manifest or bundle file that is not there."""


def _location(kind: str) -> Path:
    packaged, top_level = _LOCATIONS[kind]
    wheel = _PACKAGE_ROOT / packaged
    if wheel.is_dir():
        return wheel
    return _CHECKOUT_ROOT / top_level


def bundles_dir() -> Path:
    """The folder holding the packaged bundles (binary_seg_2d, binary_seg_3d)."""
    return _location("bundles")


def manifests_dir() -> Path:
    """The folder holding the packaged data manifests (one JSON per data set)."""
    return _location("manifests")


def is_bundle(folder: str | os.PathLike) -> bool:
    """A folder with a MONAI bundle's metadata."""
    return (Path(folder) / METADATA).is_file()


def is_trainable_bundle(folder: str | os.PathLike) -> bool:
    return (Path(folder) / TRAIN).is_file()


def bundle_names() -> list[str]:
    """The packaged bundles that can train (have configs/train.yaml)."""
    root = bundles_dir()
    return sorted(p.name for p in root.iterdir() if is_trainable_bundle(p)) if root.is_dir() else []


def bundle_dir(bundle: str | os.PathLike) -> Path:
    """A bundle folder: a path to one, or the name of a packaged bundle."""
    candidate = Path(bundle)
    if candidate.is_dir() and (is_bundle(candidate) or is_trainable_bundle(candidate)):
        return candidate
    packaged = bundles_dir() / str(bundle)
    if isinstance(bundle, str) and os.sep not in bundle and packaged.is_dir():
        return packaged
    raise RegistryError(f"unknown bundle {str(bundle)!r}: not a bundle folder and not one of {', '.join(bundle_names())}")


def default_bundle(spatial_dims: int) -> Path:
    return bundle_dir(f"binary_seg_{int(spatial_dims)}d")


def manifest_path(name: str) -> Path | None:
    """The packaged manifest of that name (``synthetic_2d`` -> .../synthetic_2d.json), or None."""
    path = manifests_dir() / f"{name}.json"
    return path if path.is_file() else None


def manifest_names() -> list[str]:
    return sorted(p.stem for p in manifests_dir().glob("*.json"))


# --- inside a bundle ----------------------------------------------------------------------------------------


def _file(bundle: str | os.PathLike, relative: str, what: str) -> Path:
    root = bundle_dir(bundle)
    path = root / relative
    if not path.is_file():
        raise RegistryError(f"bundle {root.name} ({root}) has no {relative} ({what})")
    return path


def metadata_file(bundle: str | os.PathLike) -> Path:
    return _file(bundle, METADATA, "MONAI bundle metadata")


def train_config(bundle: str | os.PathLike) -> Path:
    return _file(bundle, TRAIN, "training config")


def evaluate_config(bundle: str | os.PathLike) -> Path:
    return _file(bundle, EVALUATE, "evaluation overlay")


def inference_config(bundle: str | os.PathLike) -> Path:
    """configs/inference.json (the Zoo convention) or configs/inference.yaml."""
    root = bundle_dir(bundle)
    for relative in INFERENCE_NAMES:
        if (root / relative).is_file():
            return root / relative
    raise RegistryError(f"bundle {root.name} ({root}) has no configs/inference.json or configs/inference.yaml")


def pretrain_objectives(bundle: str | os.PathLike) -> list[str]:
    return sorted(p.stem for p in (bundle_dir(bundle) / PRETRAIN_DIR).glob("*.yaml"))


def transfer_strategies(bundle: str | os.PathLike) -> list[str]:
    return sorted(p.stem for p in (bundle_dir(bundle) / TRANSFER_DIR).glob("*.yaml"))


def pretrain_wiring(bundle: str | os.PathLike) -> Path:
    return _file(bundle, PRETRAIN, "pretraining wiring shared by every objective")


def pretrain_overlay(bundle: str | os.PathLike, objective: str) -> Path:
    return _file(bundle, f"{PRETRAIN_DIR}/{objective}.yaml", f"pretraining overlay of objective {objective!r}")


def transfer_overlay(bundle: str | os.PathLike, strategy: str) -> Path:
    return _file(bundle, f"{TRANSFER_DIR}/{strategy}.yaml", f"transfer overlay of strategy {strategy!r}")


def pretrain_config_files(bundle: str | os.PathLike, objective: str) -> tuple[str, ...]:
    """The config files a pretraining run merges, in order (``monai.bundle run --config_file [...]``): MONAI
    bundles have no include, so the shared wiring is listed before the one-line objective overlay."""
    return str(train_config(bundle)), str(pretrain_wiring(bundle)), str(pretrain_overlay(bundle, objective))


def transfer_config_files(bundle: str | os.PathLike, strategy: str) -> tuple[str, ...]:
    """The config files a fine-tuning run merges, in order."""
    return str(train_config(bundle)), str(transfer_overlay(bundle, strategy))
