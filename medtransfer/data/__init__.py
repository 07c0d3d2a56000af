"""Data: manifests, per-case checks, transform chains, the synthetic default."""

from medtransfer.data.checks import CaseError, ValidateCased
from medtransfer.data.manifest import Manifest, ManifestError, fraction_key, nested_fractions
from medtransfer.data.open import find_manifest, manifest_identity, open_manifest
from medtransfer.data.transforms import eval_transforms, load_transforms, postprocessing, train_transforms

__all__ = [
    "CaseError",
    "Manifest",
    "ManifestError",
    "ValidateCased",
    "eval_transforms",
    "find_manifest",
    "fraction_key",
    "load_transforms",
    "manifest_identity",
    "nested_fractions",
    "open_manifest",
    "postprocessing",
    "train_transforms",
]
