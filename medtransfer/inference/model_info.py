"""What a model says about its clinical use, kept under one metadata key (``clinical``) of runs and bundles.

``segment`` reads it; ``export`` writes it into the bundle's metadata.json; ``load_run`` builds it from run.json
and the training manifest. Fields:

- ``postprocessing``: the choice learned on the validation split (``medtransfer.inference.postprocess``), or None.
- ``amp``: mixed precision is allowed on GPUs (the network was checked to give the same masks under autocast
  by construction: DynUNet / FlexibleUNet with instance/batch norm; a bundle sets false to forbid it).
- ``lateralised_anatomy``: left and right differ (manifest flag), so flip test-time augmentation is refused.
- ``segment``: DICOM-SEG label and SNOMED CT category / type codes, from the manifest's ``label_codes``.
- ``algorithm``: name, version and weights sha256 that identify the model in a DICOM-SEG.
"""

from __future__ import annotations

from collections.abc import Mapping

from medtransfer.inference.dicom_seg import ANATOMICAL_STRUCTURE, code_dict, parse_code
from medtransfer.inference.postprocess import check_postprocessing, description

CLINICAL_KEY = "clinical"


def segment_codes(manifest: Mapping, where: str = "data manifest") -> dict | None:
    """``label_codes["1"]`` of a manifest as code dicts: ``{"category": {...}, "type": {...}}``, or None.

    The manifest gives ``"label_codes": {"1": {"type": "SCT:10200004:Liver", "category": "SCT:123037004:Anatomical
    Structure"}}``; the category defaults to Anatomical Structure.
    """
    codes = (manifest.get("label_codes") or {}).get("1")
    if not codes:
        return None
    name = f"{where} {manifest.get('name', '')} label_codes['1']".replace("  ", " ")
    if "type" not in codes:
        raise ValueError(f"{name}: needs a 'type' code (SCHEME:VALUE:MEANING)")
    category = parse_code(codes["category"], f"{name} category") if codes.get("category") else ANATOMICAL_STRUCTURE
    return {"category": code_dict(category), "type": code_dict(parse_code(codes["type"], f"{name} type"))}


def clinical_metadata(record: Mapping, manifest: Mapping, name: str, version: str, weights_sha256: str | None,
                      label: str = "foreground") -> dict:
    postprocessing = record.get("postprocessing")
    checked = check_postprocessing(postprocessing, "run.json postprocessing") if postprocessing else None
    return {
        "postprocessing": (
            {**checked, **{k: postprocessing[k] for k in ("validation_dice", "n_cases") if k in postprocessing}}
            if checked else None
        ),
        "amp": True,
        "lateralised_anatomy": bool(manifest.get("lateralised_anatomy", False)),
        "segment": {"label": label, **(segment_codes(manifest) or {})},
        "algorithm": {"name": name, "version": version, "weights_sha256": weights_sha256},
    }


def learned_postprocess(record: Mapping) -> dict | None:
    """The run's post-processing as PostprocessMaskd arguments (for an exported inference config), or None."""
    spec = record.get("postprocessing")
    return check_postprocessing(spec, "run.json postprocessing") if spec else None


def export_clinical(record: Mapping, manifest: Mapping, version: str, weights_sha256: str, label: str) -> dict:
    """The ``clinical`` metadata entry of a bundle exported from a run: identity = bundle name, version, hash."""
    config = record.get("config") or {}
    name = f"medtransfer {config.get('bundle', 'bundle')} {manifest.get('name', '')}".strip()
    return clinical_metadata(record, manifest, name, version, weights_sha256, label)


def postprocessing_note(clinical: Mapping) -> str:
    """One line for the model card: what was learned on the validation split, and its mean Dice there."""
    spec = clinical.get("postprocessing")
    if not spec:
        return "none (none of the candidates kept the validation Dice, or none was learned)"
    scores = spec.get("validation_dice") or {}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    return f"{description(spec)}, learned on {spec.get('n_cases', '?')} validation cases (mean Dice: {shown})"
