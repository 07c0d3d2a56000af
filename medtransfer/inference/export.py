"""`medtransfer export`: a finished run → a self-contained MONAI bundle a collaborator can use on its own.

The bundle holds the inference config of the run's bundle with the run's settings as literal top-level keys
(``spatial_dims``, ``target_spacing``, ``patch_size``, ``filters``) and no path of this machine or repository,
``models/model.pt`` with its sha256 in ``configs/metadata.json``, metadata filled from the run and its data
manifest (data format, spacing, normalisation, versions, provenance, measured test metrics), a model card in
``docs/README.md``, ``LICENSE`` and the data's licence in ``docs/data_license.txt``. Optional TorchScript and ONNX
exports are kept only if they give the same mask as the PyTorch model on a test scan; ``model.ts`` embeds
``extra/metadata.json`` and ``extra/inference.json`` as ``monai.bundle ckpt_export`` does. The result must pass
``verify_bundle`` before it is moved into place.

It stands alone: ``configs/inference.json`` uses MONAI classes with literal arguments and the bundle's own
``scripts/`` (see ``medtransfer.inference.standalone``), so ``python -m monai.bundle run`` works without
medtransfer; ``medtransfer segment`` reads the same config as data (safe loading).
"""

from __future__ import annotations

from medtransfer.errors import MedtransferError

import importlib.metadata
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import FlexibleUNet
import medtransfer
from medtransfer import registry
from medtransfer.atomic import atomic_write, replace_folder, save_json, save_torch, sha256_of
from medtransfer.inference.bundle_loading import (
    CHECKSUM_KEY,
    WEIGHTS_PATH,
    BundleError,
    SegmentationModel,
    build_safe_network,
    read_config_file,
    run_target_spacing,
    safe_spec,
)
from medtransfer.inference.bundle_verify import compare_masks, onnx_runner, verify_bundle
from medtransfer.inference.model_info import CLINICAL_KEY, export_clinical, learned_postprocess, postprocessing_note
from medtransfer.inference.bundle_networks import ProbabilityEnsemble
from medtransfer.inference.standalone import (
    REQUIRED_PACKAGES, StandaloneError, ensemble_def, inference_config, network_def, write_scripts,
)
from medtransfer.networks import NetworkSpecError, build_network
from medtransfer.networks.config import NetworkConfigError, network_input_channels, total_stride
from medtransfer.training.run_folder import RunDirectoryError, RunFolder, WrongTaskError
from medtransfer.training.weights import WeightsError, load_weights

logger = logging.getLogger(__name__)

TORCHSCRIPT_PATH = registry.TORCHSCRIPT
ONNX_PATH = registry.ONNX
INFERENCE_CONFIG = "configs/inference.json"
# medtransfer is not on the package index: the install line names the wheel built from its source.
MEDTRANSFER_INSTALL = (
    f"pip install medtransfer-{medtransfer.__version__}-py3-none-any.whl   "
    f"# the wheel built from the medtransfer source: pip wheel . --no-deps (not on PyPI)"
)
ONNX_PACKAGES = "pip install onnx onnxscript onnxruntime"
INTENSITY_NORMALISATION = {
    "method": "per-image percentile scaling (monai ScaleIntensityRangePercentilesd)",
    "lower_percentile": 0.5,
    "upper_percentile": 99.5,
    "b_min": 0.0,
    "b_max": 1.0,
    "clip": True,
}
RESEARCH_ONLY = (
    "Research use only. Not a medical device: not cleared or approved for diagnosis, treatment or any clinical "
    "decision. Check every mask before using it."
)


class ExportError(MedtransferError, ValueError):
    """A run cannot be exported (unfinished, missing files, or the exported bundle fails verification)."""


class EnsembleMemberError(ExportError):
    """Runs that cannot form one ensemble bundle: the message names the member and the field they disagree on."""


# what the members of an ensemble must share, so that their probabilities can be averaged voxel by voxel
ENSEMBLE_FIELDS = ("spatial dimensions", "architecture family", "input channels", "target spacing",
                   "label meaning", "patch size")


# --- facts from the run -------------------------------------------------------------------------------------


def _pip_version(version: str | None) -> str:
    return (version or "").split("+")[0]


def _installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _short_label(meaning: str | None) -> str:
    return (meaning or "foreground").split(" (")[0].strip()[:64] or "foreground"


def _read_run(run: Path) -> dict:
    try:
        record, _weights = RunFolder(run).check_finished("segmentation")
    except WrongTaskError as error:
        raise ExportError(f"{error}. Export the run that fine-tuned them (train.yaml with --source_checkpoint)") from None
    except RunDirectoryError as error:
        raise ExportError(str(error)) from None
    for key in ("spatial_dims", "patch_size"):
        if key not in (record.get("config") or {}):
            raise ExportError(f"{run}/run.json: config lacks {key!r}")
    return record


def _pretraining_source(checkpoint: str | None) -> dict | None:
    """The data a medtransfer pretraining checkpoint was made from, from its run's run.json if still there."""
    if not checkpoint:
        return None
    folder = RunFolder.containing(checkpoint)  # <run>/pretrained.pt or <run>/checkpoints/epoch_N.pt
    record = folder.record if folder else None
    if record and record.get("pretraining"):
        return record["pretraining"].get("source")
    return None


def _pretraining(run: Path, record: dict) -> dict:
    """Transfer strategy and the pretrained checkpoint it used (file name and sha256; no machine path)."""
    transfer = dict(record.get("transfer") or {})
    config = record.get("config") or {}
    report_path = run / "transfer.json"
    checkpoint_meta = {}
    if report_path.is_file():
        checkpoint_meta = json.loads(report_path.read_text()).get("checkpoint_meta") or {}
    source = transfer.get("source_checkpoint") or config.get("source_checkpoint")
    return {
        "strategy": transfer.get("strategy") or config.get("strategy") or "scratch",
        "loaded_parts": transfer.get("loaded_parts", []),
        "frozen_parts": transfer.get("frozen_parts", []),
        "unfreeze_epoch": transfer.get("unfreeze_epoch"),
        "transferred_lr_scale": transfer.get("transferred_lr_scale"),
        "head_reinitialised": transfer.get("head_reinitialised"),
        "source_checkpoint": Path(source).name if source else None,
        "source_checkpoint_sha256": transfer.get("checkpoint_sha256"),
        "source_checkpoint_format": transfer.get("checkpoint_format"),
        "pretraining_objective": checkpoint_meta.get("objective") or (None if source else "none (from scratch)"),
        "pretraining_epoch": checkpoint_meta.get("epoch"),
        "pretraining_source_data": _pretraining_source(source),
    }


# --- bundle files -------------------------------------------------------------------------------------------


def _check_no_machine_paths(text: str, run: Path) -> None:
    forbidden = [str(registry.bundles_dir().parent), str(run.resolve()), "bundles/", "data_manifests", str(Path.home())]
    found = [f for f in forbidden if f and f != "/" and f in text]
    if found:
        raise ExportError(f"the exported inference config would reference paths of this machine: {found}")


def _network_data_format(template_meta: dict, config: dict, manifest: dict, label: str,
                         network: torch.nn.Module) -> dict:
    dims = int(config["spatial_dims"])
    # A multiple of the network's total stride, and twice it at least where the bottleneck normalises per instance
    # (instance norm needs more than one voxel), so that MONAI's verify_net_in_out passes with its default n=1.
    flexible = isinstance(network, FlexibleUNet)  # ScriptableFlexibleUNet included (a subclass)
    multiple = total_stride(network) if flexible else 2 * total_stride(network)
    shape = [f"{multiple}*n"] * dims
    formats = json.loads(json.dumps(template_meta["network_data_format"]))
    image = formats["inputs"]["image"]
    image.update({"spatial_shape": shape, "modality": manifest.get("modality", image.get("modality", "any")),
                  "num_channels": input_channels(manifest)})
    image["format"] = "hounsfield" if manifest.get("modality") == "CT" else image.get("format", "magnitude")
    pred = formats["outputs"]["pred"]
    pred.update({"spatial_shape": shape, "channel_def": {"0": "background", "1": label}})
    return formats


def input_channels(manifest: dict) -> int:
    """The training manifest's input channels (grey 1, RGB 3, MRI sequences): what the exported network takes."""
    return int(manifest.get("channels", 1))


def _channels_text(manifest: dict) -> str:
    channels = input_channels(manifest)
    names = manifest.get("channel_names")
    named = f" ({', '.join(str(v) for v in names.values())})" if isinstance(names, dict) and names else ""
    return "one grey channel" if channels == 1 else f"{channels} channels{named}, each normalised on its own"


@dataclass
class _Member:
    """One run of the bundle: its record, manifest and spacing, and its network with the run's weights."""

    run: Path
    record: dict
    manifest: dict
    target_spacing: list | None
    network: torch.nn.Module
    definition: dict  # its network_def in the exported config

    @property
    def config(self) -> dict:
        return self.record["config"]


def _run_network(run: Path, config: dict, channels: int) -> tuple[torch.nn.Module, dict | None]:
    """The network the run trained (its source architecture when it fine-tuned in one) and that architecture."""
    if not config.get("source_network"):
        return RunFolder(run).build_network(in_channels=channels), None
    from medtransfer.transfer.source_network import resolve_source_network

    try:
        architecture = resolve_source_network(config["source_network"], config.get("source_checkpoint"))
    except (NetworkSpecError, OSError, ValueError) as error:
        raise ExportError(f"{run}/run.json source_network {config['source_network']!r}: {error}") from None
    return build_network(int(config["spatial_dims"]), architecture=architecture, in_channels=channels), architecture


def _member(run: Path, manifest: str | os.PathLike | None) -> _Member:
    record = _read_run(run)
    config = record["config"]
    try:
        target_spacing, content = run_target_spacing(config, manifest)
    except BundleError as error:
        raise ExportError(str(error)) from None
    channels = input_channels(content)
    try:
        network, architecture = _run_network(run, config, channels)
        load_weights(network, run / "model.pt")
        definition = network_def(network, config, channels, architecture)
    except (WeightsError, NetworkConfigError) as error:
        raise ExportError(str(error)) from None
    except StandaloneError as error:
        raise ExportError(f"{run}: {error}") from None
    return _Member(run, record, content, target_spacing, network.eval(), definition)


def _ensemble_field(member: _Member, name: str):
    return {
        "spatial dimensions": int(member.config["spatial_dims"]),
        "architecture family": member.definition["_target_"],
        "input channels": input_channels(member.manifest),
        "target spacing": [float(s) for s in member.target_spacing] if member.target_spacing else None,
        "label meaning": (member.manifest.get("label_meaning") or {}).get("1", "foreground"),
        "patch size": [int(s) for s in member.config["patch_size"]],
    }[name]


def check_members(members: Sequence[_Member]) -> None:
    """Members whose probabilities can be averaged; else EnsembleMemberError naming the run and the field."""
    first = members[0]
    for member in members[1:]:
        if member.run.resolve() == first.run.resolve():
            raise EnsembleMemberError(f"{member.run}: given twice; an ensemble's members are different runs")
        for name in ENSEMBLE_FIELDS:
            mine, theirs = _ensemble_field(member, name), _ensemble_field(first, name)
            if mine != theirs:
                raise EnsembleMemberError(
                    f"{member.run}: {name} {mine!r} differs from {theirs!r} of {first.run}; the members of an "
                    f"ensemble must agree on {', '.join(ENSEMBLE_FIELDS)}"
                )


def _network_text(member: _Member) -> str:
    config, definition = member.config, member.definition
    name = definition["_target_"].rsplit(".", 1)[-1]
    if config.get("backbone"):
        return f"MONAI FlexibleUNet with a {config['backbone']} encoder"
    if config.get("source_network"):
        return f"MONAI {name} (the pretraining source's own architecture)"
    return (f"MONAI DynUNet (nnU-Net topology), {len(config.get('filters') or [])} levels, filters "
            f"{'-'.join(str(f) for f in config.get('filters') or [])}")


def _member_summary(member: _Member) -> dict:
    record = member.record
    return {"run_folder": member.run.resolve().name, "run_config_hash": record.get("config_hash"),
            "seed": member.config.get("seed"), "strategy": (record.get("transfer") or {}).get("strategy")
            or member.config.get("strategy"), "best_val_dice": record.get("best_val_dice"),
            "mean_test_dice": (record.get("metrics") or {}).get("mean_dice"),
            "weights_sha256": sha256_of(member.run / "model.pt")}


def _metadata(template_meta: dict, record: dict, run: Path, manifest: dict, target_spacing, version: str,
              inferer: dict, provenance: dict, members: Sequence[_Member], network: torch.nn.Module) -> dict:
    config = record["config"]
    versions = record.get("versions") or {}
    dims = int(config["spatial_dims"])
    meaning = (manifest.get("label_meaning") or {}).get("1", "foreground")
    label = _short_label(meaning)
    # an ensemble as a whole was never evaluated: its members' own test Dice is listed in the provenance
    metrics = (record.get("metrics") or {}) if len(members) == 1 else {}
    data = record.get("data") or {}
    texts = sorted({_network_text(member) for member in members})
    network_text = texts[0] if len(members) == 1 else (
        f"an ensemble of {len(members)} networks ({'; '.join(texts)}; seeds "
        f"{', '.join(str(m.config.get('seed')) for m in members)}) whose softmax probabilities are averaged")
    network_text = network_text[0].upper() + network_text[1:]
    required = {}  # what configs/inference.json needs with plain MONAI (monai and torch have their own keys)
    for package in REQUIRED_PACKAGES[2:]:
        found = versions.get(package) or _installed(package)
        if found:
            required[package] = _pip_version(found)
    citations = manifest.get("citation") or []
    citations = [citations] if isinstance(citations, str) else list(citations)
    meta = dict(template_meta)
    meta.update(
        {
            "version": version,
            "changelog": {
                version: f"exported by medtransfer {medtransfer.__version__} from run {record.get('config_hash')} "
                         f"(finished {record.get('finished_at')})"
            },
            "monai_version": _pip_version(versions.get("monai") or _installed("monai")),
            "pytorch_version": _pip_version(versions.get("torch") or torch.__version__),
            "numpy_version": _pip_version(versions.get("numpy") or np.__version__),
            "required_packages_version": required,
            "name": f"{label} {dims}D segmentation ({manifest.get('name', config.get('data_manifest'))}, "
                    f"{provenance['strategy']})",
            "task": f"Binary {dims}D segmentation of {label} in {manifest.get('modality', 'medical')} images",
            "description": (
                f"{network_text}, trained with Dice+CE by medtransfer on {manifest.get('name')} "
                f"(fraction {config.get('fraction')}, {data.get('n_training', '?')} training cases, seed "
                f"{config.get('seed')}, transfer strategy {provenance['strategy']}). Input: {_channels_text(manifest)}, "
                f"reoriented to RAS{' and resampled to ' + str(target_spacing) + ' mm' if target_spacing else ''}, "
                f"scaled per image to [0, 1] (0.5-99.5 percentiles). Output: two-channel logits (background, {label}); "
                f"argmax gives the binary mask, written back in the input's geometry."
            ),
            "intended_use": RESEARCH_ONLY,
            "data_source": (
                f"{manifest.get('source', manifest.get('name'))} (licence: {manifest.get('license', 'unknown')})"
            ),
            "data_type": "NIfTI volumes or DICOM series folders" if dims == 3 else "2D images (PNG, NIfTI)",
            "image_classes": ("single-channel grey image" if input_channels(manifest) == 1
                              else f"{input_channels(manifest)}-channel image (channels first)")
                             + ", normalised per image to [0, 1]",
            "label_classes": f"0 background, 1 {meaning}",
            "pred_classes": f"channel 0 background, channel 1 {label} (argmax gives the binary mask)",
            "references": list(template_meta.get("references", [])) + citations,
            "network_data_format": _network_data_format(template_meta, config, manifest, label, network),
            "eval_metrics": {
                "mean_dice": metrics.get("mean_dice"),
                "mean_hd95": metrics.get("mean_hd95"),
                "mean_surface_dice": metrics.get("mean_surface_dice"),
                "n_test_cases": metrics.get("n_test_cases"),
            },
            "preprocessing": {
                "spatial_dims": dims,
                "orientation": "RAS" if dims == 3 else None,
                "target_spacing": target_spacing,
                "intensity_normalisation": INTENSITY_NORMALISATION,
                "sliding_window": inferer,
            },
            "training_data": {
                "manifest": manifest.get("name"),
                "modality": manifest.get("modality"),
                "license": manifest.get("license"),
                "source": manifest.get("source"),
                "citation": citations,
                "spacing": manifest.get("spacing"),
                "label_meaning": manifest.get("label_meaning"),
                "label_map": manifest.get("label_map"),
                "fraction": config.get("fraction"),
                "n_training": data.get("n_training"),
                "n_validation": data.get("n_validation"),
                "n_test": data.get("n_test"),
            },
            "provenance": {
                **provenance,
                "network": network_text,
                "ensemble": [_member_summary(m) for m in members] if len(members) > 1 else None,
                "run_config_hash": record.get("config_hash"),
                "run_folder": run.resolve().name,
                "bundle": config.get("bundle"),
                "seed": config.get("seed"),
                "data_fraction": config.get("fraction"),
                "max_epochs": config.get("max_epochs"),
                "epochs": record.get("epochs"),
                "best_epoch": record.get("best_epoch"),
                "best_val_dice": record.get("best_val_dice"),
                "learning_rate": config.get("learning_rate"),
                "patch_size": config.get("patch_size"),
                "filters": config.get("filters"),
                "started_at": record.get("started_at"),
                "finished_at": record.get("finished_at"),
                "wall_time_seconds": record.get("wall_time_seconds"),
                "versions_at_training": versions,
                "exported_with": {"medtransfer": medtransfer.__version__, "torch": torch.__version__,
                                  "monai": _installed("monai")},
            },
            CHECKSUM_KEY: {},
            "exports": {},
        }
    )
    return meta


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _members_text(members: list | None) -> str:
    if not members:
        return ""
    rows = "\n".join(
        f"  - run `{m['run_folder']}` (seed {m['seed']}, strategy {m['strategy']}, test Dice "
        f"{_fmt(m['mean_test_dice'])}, weights sha256 `{m['weights_sha256'][:16]}…`)" for m in members)
    return (f"\n- Ensemble members (the mask is the argmax of their averaged softmax probabilities, as "
            f"`medtransfer segment RUN_A RUN_B ...` computes it; the description below is the first member's; "
            f"the ensemble itself has no test metrics of its own):\n{rows}")


def model_card(meta: dict) -> str:
    """docs/README.md: what a clinical collaborator needs to judge and run the model."""
    data, prov, metrics = meta["training_data"], meta["provenance"], meta["eval_metrics"]
    pre = meta["preprocessing"]
    dims = pre["spatial_dims"]
    postprocessing = postprocessing_note(meta.get(CLINICAL_KEY) or {})
    citations = "\n".join(f"  - {c}" for c in data.get("citation") or []) or "  - (none given in the data manifest)"
    exports = "\n".join(
        f"- `{info['file']}`: {'same mask as the PyTorch model' if info['same_mask'] else 'MASK DIFFERS'} on "
        f"{info['test_scan']} ({info['differing_voxels']} of {info['voxels']} voxels differ)"
        for info in meta.get("exports", {}).values()
    ) or "- none (PyTorch weights only)"
    checksums = "\n".join(f"- `{path}`: `{digest}`" for path, digest in meta[CHECKSUM_KEY].items())
    source = prov.get("source_checkpoint")
    pretrained = (
        f"Initialised from the pretrained checkpoint `{source}` (sha256 `{prov.get('source_checkpoint_sha256')}`, "
        f"format {prov.get('source_checkpoint_format')}, pretraining objective: {prov.get('pretraining_objective')}, "
        f"epoch {prov.get('pretraining_epoch')}, pretraining data: "
        f"{prov.get('pretraining_source_data') or 'not recorded'}); "
        f"parts loaded: {', '.join(prov.get('loaded_parts') or []) or 'none'}; "
        f"frozen: {', '.join(prov.get('frozen_parts') or []) or 'none'}."
        if source else "Trained from scratch (no pretrained weights)."
    )
    geometry = ("Reoriented to RAS, " if dims == 3 else "") + (
        f"resampled to {pre['target_spacing']} mm, " if pre["target_spacing"] else "used at its own spacing, "
    )
    num_channels = int(meta["network_data_format"]["inputs"]["image"].get("num_channels", 1))
    input_text = "one grey channel" if num_channels == 1 else f"{num_channels} channels (e.g. an RGB image)"
    return f"""# {meta['name']}

{meta['description']}

**{RESEARCH_ONLY}**

## Intended use
Segments {meta['network_data_format']['outputs']['pred']['channel_def']['1']} in {dims}D
{data.get('modality') or ''} images like those it was trained on ({data.get('manifest')}), for research:
prototypes and transfer-learning studies. It is not validated for clinical use, other modalities, other anatomy,
other scanners or populations.

## Data it was trained on
- Data set: **{data.get('manifest')}** — {data.get('source')}
- Licence of the data: **{data.get('license')}**. Weights trained on these data may carry the data's terms
  (e.g. share-alike or non-commercial clauses); see `docs/data_license.txt`.
- Label 1 means: {data.get('label_meaning', {}).get('1') if data.get('label_meaning') else 'foreground'}
- Training cases: {data.get('n_training')} (fraction {data.get('fraction')} of the training split),
  validation {data.get('n_validation')}, test {data.get('n_test')}.
- Cite:
{citations}

## How it was trained
- Network: {prov.get('network')}.{_members_text(prov.get('ensemble'))}
- Transfer strategy: **{prov.get('strategy')}**. {pretrained}
- Seed {prov.get('seed')}, {prov.get('epochs')} epochs (best validation Dice {_fmt(prov.get('best_val_dice'))} at epoch
  {prov.get('best_epoch')}), learning rate {prov.get('learning_rate')}, patches {prov.get('patch_size')}.
- Run `{prov.get('run_folder')}` (configuration hash `{prov.get('run_config_hash')}`),
  finished {prov.get('finished_at')},
  with {', '.join(f'{k} {v}' for k, v in (prov.get('versions_at_training') or {}).items())}.

## Input and output
- Input: {input_text} per scan: {meta['data_type']}.
  {geometry}scaled per image to [0, 1] (0.5–99.5 percentiles{' per channel' if num_channels > 1 else ''}), segmented by sliding windows of
  {pre['sliding_window']['roi_size']}.
- Output: a binary mask (uint8, 1 = {meta['network_data_format']['outputs']['pred']['channel_def']['1']}) with the
  input's own shape, orientation and spacing; for DICOM input also a DICOM-SEG referencing the source series.

## Performance (test split of the training data, {metrics.get('n_test_cases')} cases)
| metric | value |
|---|---|
| mean Dice | {_fmt(metrics.get('mean_dice'))} |
| mean HD95 (mm) | {_fmt(metrics.get('mean_hd95'), 2)} |
| mean surface Dice | {_fmt(metrics.get('mean_surface_dice'))} |

These numbers hold for data like the test split only; expect lower values on other scanners, protocols or
populations, and measure on your own data before relying on the model.

## How to run it
With MONAI alone (no medtransfer; NIfTI masks named `<scan>_seg.nii.gz`):
```bash
pip install "monai=={meta['monai_version']}" {' '.join(f'"{k}=={v}"' for k, v in meta['required_packages_version'].items())}
python -m monai.bundle run --config_file THIS_FOLDER/configs/inference.json --bundle_root THIS_FOLDER \\
    --meta_file THIS_FOLDER/configs/metadata.json --input_dir scans/ --output_dir masks/
```
With medtransfer (safe loading, DICOM-SEG for DICOM series, a summary.csv):
```bash
{MEDTRANSFER_INSTALL}
medtransfer bundle verify THIS_FOLDER    # checksums, metadata schema, network input/output, exports
medtransfer segment THIS_FOLDER scans/ --output masks/
```
Both give the same mask. `configs/inference.json` uses MONAI classes with literal arguments; the DICOM series
reader, the image check, the input listing and the weights checksum check are in `scripts/` (copied from
medtransfer {prov.get('exported_with', {}).get('medtransfer')}); `models/model.ts` (if present) embeds
`extra/metadata.json` and `extra/inference.json` like `monai.bundle ckpt_export`.

## What this bundle can execute
`medtransfer segment` reads the configs as data: it builds only the allow-listed network (MONAI DynUNet /
FlexibleUNet) from literal arguments, accepts the preprocessing and postprocessing only if they are exactly
medtransfer's standard chains (then runs its own copy of them) and a sliding-window inferer; the weights are loaded
with `torch.load(weights_only=True)` after their sha256 is checked. Nothing in the configs or `scripts/` is
evaluated or imported. `python -m monai.bundle run` (and `medtransfer segment --trusted`) evaluate the whole config
and import `scripts/`, which is Python: run them only on bundles from authors you trust, after reading
`configs/inference.json` and `scripts/`.

## Files and checksums (sha256)
{checksums}

Exports:
{exports}

## Limitations
- Binary: one structure per model; the mask is the argmax of two classes. Post-processing: {postprocessing}.
- Trained on {data.get('n_training')} cases of one data set; performance elsewhere is unknown.
- A small network sized for CPUs; accuracy is below a fully trained nnU-Net.
- DICOM series must be complete, evenly spaced and unsheared; `segment` refuses others (or warns with
  `--allow-uneven`) and names the files involved.
- {RESEARCH_ONLY}

## License
Configurations and weights: see `LICENSE` (Apache-2.0). Training data: {data.get('license')}
(`docs/data_license.txt`).
"""


def _data_license(meta: dict) -> str:
    data = meta["training_data"]
    citations = "\n".join(f"  - {c}" for c in data.get("citation") or [])
    return (
        f"Training data: {data.get('manifest')}\nSource: {data.get('source')}\nLicence: {data.get('license')}\n"
        f"Citation:\n{citations}\n\nThe weights in models/ were trained on these data; their terms may apply to the "
        f"weights and to derived work.\n"
    )


# --- exports and their checks -------------------------------------------------------------------------------


def _test_image(model: SegmentationModel, record: dict, manifest: dict, test_scan) -> tuple[torch.Tensor, str]:
    """A preprocessed test scan: the one given, else the run's first test case, else a seeded random volume."""
    from medtransfer.data.manifest import Manifest, ManifestError

    path = Path(test_scan) if test_scan else None
    if path is None and record["config"].get("data_root"):
        try:
            data_root = Path(record["config"]["data_root"])
            path = Path(Manifest(path=None, content=manifest, data_root=data_root).datalist("test")[0]["image"])
        except (ManifestError, IndexError, KeyError, OSError):
            path = None
    if path is not None:
        data = model.preprocessing({"image": str(path)})
        return data["image"].as_tensor()[None], path.name
    generator = torch.Generator().manual_seed(0)
    shape = [2 * s for s in model.roi_size]
    return torch.rand(1, 1, *shape, generator=generator), f"a seeded random volume {shape} (no test scan found)"


def _scriptable(network: torch.nn.Module) -> torch.nn.Module:
    """A copy TorchScript compiles: ResNet "A" shortcuts as modules (same tensors), an ensemble member by member."""
    import copy

    from medtransfer.inference.bundle_networks import replace_partial_shortcuts

    if isinstance(network, ProbabilityEnsemble):
        return ProbabilityEnsemble([_scriptable(member) for member in network.members]).eval()
    return replace_partial_shortcuts(copy.deepcopy(network))


def _torchscript(network: torch.nn.Module, roi_size: list[int], path: Path, meta: dict, inference_text: str) -> None:
    """models/model.ts with extra/metadata.json and extra/inference.json inside, as `monai.bundle ckpt_export`."""
    from monai.data import save_net_with_metadata

    try:
        scripted = torch.jit.script(_scriptable(network))
    except Exception as error:  # SwinUNETR cannot be scripted; a fixed window size lets a trace stand in
        logger.warning("torch.jit.script failed (%s); tracing at the window size %s instead", error, roi_size)
        scripted = torch.jit.trace(network, torch.rand(1, network_input_channels(network) or 1, *roi_size))
    extra = {"inference.json": json.dumps(json.loads(inference_text)).encode()}
    atomic_write(path, lambda stream: save_net_with_metadata(
        scripted, stream, include_config_vals=False, meta_values=meta, more_extra_files=extra))


def _check_literal_network(spec, network: torch.nn.Module, weights: Path, where: str) -> None:
    """The config's literal network_def must be the run's network: same tensors (strict load), same logits."""
    literal = build_safe_network(spec)
    try:
        load_weights(literal, weights)
    except WeightsError as error:
        raise ExportError(f"{where}: the exported network_def does not fit the run's weights: {error}") from None
    generator = torch.Generator().manual_seed(0)
    probe = torch.rand(1, spec.channels, *spec.roi_size, generator=generator)
    with torch.no_grad():
        same = torch.equal(literal.eval()(probe), network(probe))
    if not same:
        raise ExportError(f"{where}: the exported network_def gives other logits than the run's network")


def require_onnx() -> None:
    missing = []
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ExportError(f"ONNX export needs the optional package(s) {', '.join(missing)}: {ONNX_PACKAGES}")


def _onnx(network: torch.nn.Module, roi_size: list[int], path: Path) -> None:
    require_onnx()
    example = torch.rand(1, network_input_channels(network) or 1, *roi_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Sliding windows are always roi_size (smaller images are padded), so only the batch axis is dynamic.
    torch.onnx.export(
        network, (example,), str(path), input_names=["image"], output_names=["pred"],
        dynamic_axes={"image": {0: "batch"}, "pred": {0: "batch"}}, opset_version=17, dynamo=False,
    )


# --- the command --------------------------------------------------------------------------------------------


def _zip(folder: Path, archive: Path) -> Path:
    def write(stream) -> None:
        with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    zipped.write(path, f"{folder.name}/{path.relative_to(folder)}")  # unzips into <name>/

    atomic_write(archive, write)  # a full disk or a crash leaves the previous zip (and no temporary file)
    return archive


def export_bundle(
    run_dir: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    zip: bool = False,
    torchscript: bool = False,
    onnx: bool = False,
    overwrite: bool = False,
    manifest: str | os.PathLike | None = None,
    test_scan: str | os.PathLike | None = None,
    version: str = "0.1.0",
) -> Path:
    """Export the finished run in ``run_dir`` as a bundle folder ``output`` (and ``output``.zip with ``zip``).

    ``run_dir`` may be several runs: an ensemble bundle (one network_def per member, probabilities averaged); the
    members must agree on ``ENSEMBLE_FIELDS``, else EnsembleMemberError names the member and the field."""
    runs = [Path(run_dir)] if isinstance(run_dir, (str, os.PathLike)) else [Path(r) for r in run_dir]
    if not runs:
        raise ExportError("export: give at least one run folder")
    output = Path(output)
    run = runs[0]
    archive = output.with_name(output.name + ".zip")
    for target in (output, archive) if zip else (output,):
        if target.exists() and not overwrite:
            raise ExportError(f"{target} exists; choose another --output or pass --overwrite")
    if output.exists() and not (output / "configs" / "metadata.json").is_file():
        raise ExportError(f"{output} exists and is not a bundle; refusing to replace it")
    if onnx:
        require_onnx()
    members = [_member(member_run, manifest) for member_run in runs]
    check_members(members)
    first = members[0]
    record, config, manifest_content, target_spacing = first.record, first.config, first.manifest, first.target_spacing
    dims = int(config["spatial_dims"])
    try:
        template = registry.bundle_dir(config.get("bundle") or f"binary_seg_{dims}d")
        template_inference = registry.inference_config(template)
        template_meta = json.loads(registry.metadata_file(template).read_text())
    except registry.RegistryError as error:
        raise ExportError(f"{run}: the run's bundle template: {error}") from None

    ensemble = len(members) > 1
    network = ProbabilityEnsemble([m.network for m in members]).eval() if ensemble else first.network
    definition = ensemble_def([m.definition for m in members]) if ensemble else first.definition
    template_spec = safe_spec(template, read_config_file(template_inference), template_inference)
    learned = learned_postprocess(record)  # an ensemble uses its first member's, as segment does
    try:
        inference = inference_config(network, config, target_spacing, [int(s) for s in config["patch_size"]],
                                     template_spec.sw_batch_size, template_spec.overlap, postprocess=learned,
                                     channels=input_channels(manifest_content), definition=definition)
    except StandaloneError as error:
        raise ExportError(f"{run}: {error}") from None
    text = json.dumps(inference, indent=2) + "\n"
    for member in members:
        _check_no_machine_paths(text, member.run)
    spec = safe_spec(output, inference, output / INFERENCE_CONFIG,  # the export must load safely
                     {CLINICAL_KEY: {"postprocessing": learned}} if learned else None)
    inferer = {"roi_size": spec.roi_size, "sw_batch_size": spec.sw_batch_size, "overlap": spec.overlap}
    meta = _metadata(template_meta, record, run, manifest_content, target_spacing, version, inferer,
                     _pretraining(run, record), members, first.network)

    staging = output.with_name(f".{output.name}.export-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "configs").mkdir(parents=True)
        (staging / "models").mkdir()
        (staging / "docs").mkdir()
        (staging / INFERENCE_CONFIG).write_text(text)
        write_scripts(staging)
        if ensemble:  # one state dict: members.<i>.<tensor>, what the ensemble network_def loads strictly
            save_torch(staging / WEIGHTS_PATH, {k: v.detach().clone() for k, v in network.state_dict().items()})
        else:
            shutil.copyfile(run / "model.pt", staging / WEIGHTS_PATH)
        _check_literal_network(spec, network, staging / WEIGHTS_PATH, ", ".join(str(r) for r in runs))
        shutil.copyfile(template / registry.LICENSE, staging / registry.LICENSE)
        meta[CHECKSUM_KEY][WEIGHTS_PATH] = sha256_of(staging / WEIGHTS_PATH)
        meta[CLINICAL_KEY] = export_clinical(  # post-processing, DICOM-SEG codes, identity (model_info)
            record, manifest_content, version, meta[CHECKSUM_KEY][WEIGHTS_PATH],
            meta["network_data_format"]["outputs"]["pred"]["channel_def"]["1"],
        )

        exported = []
        if torchscript:
            _torchscript(network, spec.roi_size, staging / TORCHSCRIPT_PATH, meta, text)
            exported.append(("torchscript", TORCHSCRIPT_PATH))
        if onnx:
            _onnx(network, spec.roi_size, staging / ONNX_PATH)
            exported.append(("onnx", ONNX_PATH))
        if exported:
            from medtransfer.inference.bundle_loading import _eval_preprocessing

            model = SegmentationModel(
                network=network, spatial_dims=dims,
                preprocessing=_eval_preprocessing(dims, target_spacing, input_channels(manifest_content)),
                roi_size=spec.roi_size, sw_batch_size=spec.sw_batch_size, overlap=spec.overlap, source=str(run),
            )
            image, scan_name = _test_image(model, record, manifest_content, test_scan)
            for kind, relative in exported:
                runner = (
                    torch.jit.load(str(staging / relative), map_location="cpu") if kind == "torchscript"
                    else onnx_runner(staging / relative)
                )
                comparison = compare_masks(network, runner, image, spec.roi_size, spec.sw_batch_size, spec.overlap)
                if not comparison["same_mask"]:
                    raise ExportError(
                        f"the {kind} export gives another mask than the PyTorch model on {scan_name}: "
                        f"{comparison['differing_voxels']} voxels differ; not exported"
                    )
                meta["exports"][kind] = {"file": relative, "test_scan": scan_name, **comparison}
                meta[CHECKSUM_KEY][relative] = sha256_of(staging / relative)

        save_json(staging / "configs" / "metadata.json", meta)
        (staging / "docs" / "README.md").write_text(model_card(meta))
        (staging / "docs" / "data_license.txt").write_text(_data_license(meta))
        report = verify_bundle(staging)
        if not report["ok"]:
            failed = {k: v for k, v in report["checks"].items() if v != "passed" and not v.startswith("skipped")}
            raise ExportError(f"the exported bundle fails verification: {json.dumps(failed, indent=2)}")
        output.parent.mkdir(parents=True, exist_ok=True)
        replace_folder(staging, output)  # the previous bundle stays whole until this one takes its place
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if zip:
        _zip(output, archive)
    logger.info("exported %s -> %s", ", ".join(str(r) for r in runs), output)
    return output
