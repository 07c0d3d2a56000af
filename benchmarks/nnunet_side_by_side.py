"""nnU-Net v2 itself on a medtransfer manifest's exact split, side by side with medtransfer runs (issue 25).

    python benchmarks/nnunet_side_by_side.py data_manifests/busi_breast_us_lesions.json --data-root ../shared/data \\
        --minutes 10 [--configuration 2d|3d_fullres] [--workdir DIR] [--ours RUN_DIR ...] [--ours-plan plan.json]

What it does, each stage skipped when its output is already in the work folder (so a stopped run resumes):

1. writes the manifest's training + validation cases as nnU-Net raw `imagesTr`/`labelsTr` and its test cases as
   `imagesTs` (+ `labelsTs` for scoring), labels mapped onto {0, 1} with the manifest's `label_map`, one file per
   channel (`_0000`, `_0001`, ...; PNG for 2D, read by nnU-Net's NaturalImage2DIO; NIfTI for 3D), and
   `dataset.json`;
2. makes nnU-Net's own virtual environment (`.venv-nnunet/` at the repository root, ignored by git:
   `nnunetv2==2.8.1` with the `torch==2.14.1` its torchvision needs; medtransfer's `.venv` keeps its CPU torch);
3. runs `nnUNetv2_plan_and_preprocess -c CONFIGURATION --verify_dataset_integrity`, then writes
   `splits_final.json` with one fold: train = the manifest's training split, val = its validation split;
4. trains fold 0 on the CPU with `nnUNetTrainer_medtransferTimeCap` (nnU-Net's default trainer, written into the
   venv's `nnunetv2/training/nnUNetTrainer/variants/` so that `-tr` finds it): it stops after `--minutes` of
   training wall time and still saves `checkpoint_final.pth`; its epochs are `--iterations` long (nnU-Net: 250)
   and its poly learning-rate schedule is re-fitted after every epoch to end at the budget; the final
   sliding-window validation of nnU-Net's training command is skipped (the comparison is on the test split);
5. predicts the test split with `nnUNetv2_predict` (checkpoint_final, no mirroring unless `--tta`) and scores it
   with medtransfer's own `medtransfer.evaluation.metrics.case_metrics` (Dice per case, mean), the code that
   scored every `--ours` run's `run.json["per_case"]`. `--tta` is a prediction choice, not part of the work
   folder's identity: run again with `--tta` on a finished folder and it predicts once more with nnU-Net's
   mirroring into `predictions_test_tta/` and writes `side_by_side_tta.json`, leaving the plain result as it was;
6. prints nnU-Net's plan (patch, spacing, batch, network) next to ours (`--ours-plan`, else the `plan` or
   configuration the `--ours` run recorded), both test Dice at their training wall time, nnU-Net's seconds per
   iteration and its projected time for the default schedule (1000 epochs × 250 + 50 validation iterations),
   and writes `side_by_side.json` (`side_by_side_tta.json` with `--tta`) in the work folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medtransfer.atomic import atomic_write, save_json  # noqa: E402
from medtransfer.data import open_manifest  # noqa: E402
from medtransfer.data.checks import CaseError  # noqa: E402
from medtransfer.data.manifest import Manifest  # noqa: E402
from medtransfer.errors import MedtransferError  # noqa: E402

NNUNET_VERSION = "2.8.1"
# nnunetv2 2.8.1 asks torch!=2.9.*,>=2.1.2, but its dynamic-network-architectures pulls timm and so torchvision
# 0.29.1, which pins torch==2.14.1: pip takes both from this machine's disk (a CUDA build; it runs on the CPU).
NNUNET_TORCH = "2.14.1"
NNUNET_VENV = REPO / ".venv-nnunet"
TRAINER = "nnUNetTrainer_medtransferTimeCap"
DEFAULT_EPOCHS, DEFAULT_ITERATIONS, DEFAULT_VAL_ITERATIONS = 1000, 250, 50  # nnUNetTrainer's schedule
STATE_NAME = "benchmark.json"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class BenchmarkError(MedtransferError, RuntimeError):
    """The benchmark cannot go on as asked (a stage failed, a work folder of another configuration, ...)."""


# --------------------------------------------------------------------------------------------------------------
# 1. The raw data set
# --------------------------------------------------------------------------------------------------------------
def manifest_digest(manifest: Manifest) -> str:
    return hashlib.sha256(json.dumps(manifest.content, sort_keys=True).encode()).hexdigest()[:12]


def dataset_folder_name(dataset_id: int, manifest: Manifest) -> str:
    if not 1 <= int(dataset_id) <= 999:
        raise BenchmarkError(f"nnU-Net dataset ids are 1–999, got {dataset_id}")
    return f"Dataset{int(dataset_id):03d}_{re.sub(r'[^A-Za-z0-9]+', '', manifest.name.title())}"


def _file_ending(manifest: Manifest) -> str:
    first = manifest.content["training"][0]["image"]
    first = first[0] if isinstance(first, list) else first
    if manifest.dimensions == 2:
        if not first.lower().endswith(".png"):
            raise BenchmarkError(f"{manifest.path}: 2D cases must be PNG files for nnU-Net's NaturalImage2DIO, "
                                 f"got {first}")
        return ".png"
    if not first.lower().endswith((".nii", ".nii.gz")):
        raise BenchmarkError(f"{manifest.path}: 3D cases must be NIfTI files (.nii/.nii.gz), got {first} "
                             "(a DICOM series: convert it with `medtransfer segment` or dcm2niix first)")
    return ".nii.gz"


def _channel_names(manifest: Manifest, png: bool) -> dict[str, str]:
    """nnU-Net normalises a channel named "CT" with CT statistics and every other one with a z-score."""
    named = manifest.content.get("channel_names")
    if isinstance(named, dict) and len(named) == manifest.channels:
        return {str(k): str(v) for k, v in named.items()}
    if png and manifest.channels == 3:
        return {"0": "R", "1": "G", "2": "B"}
    modality = str(manifest.content.get("modality") or "image")
    if manifest.channels == 1:
        return {"0": modality}
    return {str(c): f"{modality}_{c}" for c in range(manifest.channels)}


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


def _png_channels(path: Path, channels: int) -> list[np.ndarray]:
    """A PNG's channels as grey arrays (H, W); its count must be the manifest's, as medtransfer's loader checks."""
    array = _read_png(path)
    found = 1 if array.ndim == 2 else array.shape[-1]
    if found != channels:
        kind = "a single-channel (grey) image" if channels == 1 else f"{channels} channels"
        raise CaseError(f"{path}: expected {kind}, got {found} channel(s) (the manifest's `channels`)")
    return [array] if array.ndim == 2 else [array[..., c] for c in range(found)]


def _nifti_channels(path: Path, channels: int):
    """(list of 3D arrays, affine, header) of a NIfTI image; a 4D file holds its channels on the last axis."""
    import nibabel as nib

    image = nib.load(str(path))
    array = np.asanyarray(image.dataobj)
    if array.ndim == 3:
        found, volumes = 1, [array]
    elif array.ndim == 4:
        found, volumes = array.shape[3], [array[..., c] for c in range(array.shape[3])]
    else:
        raise CaseError(f"{path}: a {array.ndim}D image where a 3D scan (or 4D with channels last) belongs")
    if found != channels:
        raise CaseError(f"{path}: expected {channels} channel(s), got {found} (the manifest's `channels`)")
    return volumes, image.affine, image.header


def map_label(label: np.ndarray, label_map: dict[int, int] | None, where: str) -> np.ndarray:
    """A label with the manifest's values mapped onto {0, 1} (medtransfer's MapLabelValued), as uint8.

    Values outside {0, 1} (no label_map) or outside {0, *label_map} are refused, as medtransfer's check_label
    refuses them."""
    values = {int(v) for v in np.unique(label)}
    allowed = {0, 1} if not label_map else {0, *label_map}
    if not values <= allowed:
        hint = "add a label_map to the manifest" if not label_map else f"the label_map maps only {sorted(label_map)}"
        raise CaseError(f"{where}: label is not binary: values {sorted(values)}; {hint}")
    if not label_map:
        return label.astype(np.uint8)
    mapped = np.zeros(label.shape, dtype=np.uint8)
    for value, target in label_map.items():
        mapped[label == value] = target
    return mapped


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    def write(stream):
        Image.fromarray(array).save(stream, format="PNG")

    atomic_write(path, write)


def _write_nifti(path: Path, array: np.ndarray, affine, header) -> None:
    import nibabel as nib

    header = header.copy()
    header.set_data_dtype(array.dtype)
    image = nib.Nifti1Image(array, affine, header)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(image, str(temporary))
    os.replace(temporary, path)


def _image_paths(item: dict) -> list[Path]:
    image = item["image"]
    return [Path(p) for p in (image if isinstance(image, list) else [image])]


def _write_case(manifest: Manifest, item: dict, images_dir: Path, labels_dir: Path, ending: str) -> None:
    case_id, channels = item["id"], manifest.channels
    paths = _image_paths(item)
    per_file = 1 if len(paths) > 1 else channels  # a list of files is one file per channel (nnU-Net layout)
    if len(paths) > 1 and len(paths) != channels:
        raise CaseError(f"{manifest.path}: case {case_id!r} lists {len(paths)} channel files, the manifest says "
                        f"channels = {channels}")
    if ending == ".png":
        arrays = [a for p in paths for a in _png_channels(p, per_file)]
        for channel, array in enumerate(arrays):
            _write_png(images_dir / f"{case_id}_{channel:04d}.png", array)
        if "label" in item:
            label = _png_channels(Path(item["label"]), 1)[0]
            if label.shape != arrays[0].shape:
                raise CaseError(f"image/label shape mismatch: {paths[0]} has shape {arrays[0].shape}, "
                                f"{item['label']} has {label.shape}")
            _write_png(labels_dir / f"{case_id}.png", map_label(label, manifest.label_map, item["label"]))
        return
    volumes, affine, header = [], None, None
    for path in paths:
        found, affine_here, header_here = _nifti_channels(path, per_file)
        volumes += found
        affine, header = (affine_here, header_here) if affine is None else (affine, header)
    for channel, volume in enumerate(volumes):
        _write_nifti(images_dir / f"{case_id}_{channel:04d}.nii.gz", np.asarray(volume), affine, header)
    if "label" in item:
        import nibabel as nib

        label_image = nib.load(item["label"])
        label = np.asanyarray(label_image.dataobj)
        if label.shape != volumes[0].shape:
            raise CaseError(f"image/label shape mismatch: {paths[0]} has shape {volumes[0].shape}, "
                            f"{item['label']} has {label.shape}")
        _write_nifti(labels_dir / f"{case_id}.nii.gz", map_label(label, manifest.label_map, item["label"]),
                     label_image.affine, label_image.header)


def dataset_json(manifest: Manifest) -> dict:
    """nnU-Net's dataset.json for the manifest (plus the manifest's identity, which nnU-Net ignores)."""
    ending = _file_ending(manifest)
    content = {
        "channel_names": _channel_names(manifest, ending == ".png"),
        "labels": {"background": 0, "foreground": 1},
        "numTraining": len(manifest.content["training"]) + len(manifest.content["validation"]),
        "file_ending": ending,
        "name": manifest.name,
        "description": f"medtransfer manifest {manifest.name} (label_map {manifest.label_map}), "
                       "training + validation in imagesTr, test in imagesTs",
        "reference": str(manifest.content.get("source", "")),
        "licence": str(manifest.content.get("license", "")),
        "medtransfer_manifest": {"name": manifest.name, "sha256_12": manifest_digest(manifest),
                                 "training": len(manifest.content["training"]),
                                 "validation": len(manifest.content["validation"]),
                                 "test": len(manifest.content["test"])},
    }
    if ending == ".png":
        content["overwrite_image_reader_writer"] = "NaturalImage2DIO"
    return content


def manifest_splits(manifest: Manifest) -> list[dict]:
    """nnU-Net's splits_final.json: one fold, train = the manifest's training split, val = its validation split."""
    return [{"train": manifest.case_ids("training"), "val": manifest.case_ids("validation")}]


def write_raw_dataset(manifest: Manifest, folder: Path) -> dict:
    """Write `folder` (nnUNet_raw/DatasetXXX_Name) from the manifest's exact splits; return its dataset.json.

    A folder that already holds the same dataset.json is kept as it is (a resumed benchmark); one of another
    manifest or version is refused, never overwritten."""
    folder = Path(folder)
    content = dataset_json(manifest)
    existing = folder / "dataset.json"
    if existing.is_file():
        if json.loads(existing.read_text()) != content:
            raise BenchmarkError(f"{folder}: holds an nnU-Net data set of another manifest or version "
                                 f"(its dataset.json differs); use another --workdir or --overwrite")
        return content
    if folder.exists() and any(folder.iterdir()):
        raise BenchmarkError(f"{folder}: exists without a dataset.json (an interrupted export?); remove it or use "
                             "--overwrite")
    for split in ("training", "validation", "test"):
        for case_id in manifest.case_ids(split):
            if not _SAFE_ID.match(case_id):
                raise CaseError(f"{manifest.path}: case id {case_id!r} cannot name nnU-Net files "
                                "(letters, digits, '_', '-', '.' only)")
    ending = content["file_ending"]
    for split, images, labels in (("training", "imagesTr", "labelsTr"), ("validation", "imagesTr", "labelsTr"),
                                  ("test", "imagesTs", "labelsTs")):
        for item in manifest.datalist(split):
            _write_case(manifest, item, folder / images, folder / labels, ending)
    save_json(existing, content)  # last: its presence means the export is complete
    return content


def write_splits(manifest: Manifest, preprocessed_dataset: Path) -> Path:
    path = Path(preprocessed_dataset) / "splits_final.json"
    splits = manifest_splits(manifest)
    if path.is_file() and json.loads(path.read_text()) != splits:
        raise BenchmarkError(f"{path}: holds another split than the manifest's; use another --workdir or --overwrite")
    save_json(path, splits)
    return path


# --------------------------------------------------------------------------------------------------------------
# 2. nnU-Net's virtual environment and the time-capped trainer
# --------------------------------------------------------------------------------------------------------------
TRAINER_SOURCE = '''"""Written by medtransfer's benchmarks/nnunet_side_by_side.py, which rewrites it on every run.

nnU-Net's default trainer (network, loss, augmentation, optimiser unchanged) stopped by wall time:
MEDTRANSFER_NNUNET_BUDGET_SECONDS of training (from the start of run_training), epochs of
MEDTRANSFER_NNUNET_ITERATIONS training and MEDTRANSFER_NNUNET_VAL_ITERATIONS validation iterations. After every
epoch the poly schedule's length is re-fitted to the epochs that fit the remaining budget, so the learning rate
decays over the budget as it would over nnU-Net's 1000 epochs. The epoch in which the budget runs out ends at that
iteration; checkpoint_final.pth is saved as usual. Timings go to medtransfer_timecap.json in the fold's folder.
nnU-Net's final sliding-window validation is skipped (the side-by-side scores the test split).
"""
import json
import math
import os
import time

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_medtransferTimeCap(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_seconds = float(os.environ["MEDTRANSFER_NNUNET_BUDGET_SECONDS"])
        self.num_iterations_per_epoch = int(os.environ.get("MEDTRANSFER_NNUNET_ITERATIONS", 250))
        self.num_val_iterations_per_epoch = int(os.environ.get("MEDTRANSFER_NNUNET_VAL_ITERATIONS", 50))

    def _write_timing(self, record):
        path = os.path.join(self.output_folder, "medtransfer_timecap.json")
        with open(path + ".tmp", "w") as stream:
            json.dump(record, stream, indent=2)
        os.replace(path + ".tmp", path)

    def run_training(self):
        started = time.perf_counter()
        self.on_train_start()
        ready = time.perf_counter()
        train_seconds, val_seconds, epoch_seconds, pseudo_dice = [], [], [], []
        stop_reason = None
        while stop_reason is None:
            epoch_start = time.perf_counter()
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = []
            for _ in range(self.num_iterations_per_epoch):
                tick = time.perf_counter()
                outputs.append(self.train_step(next(self.dataloader_train)))
                train_seconds.append(time.perf_counter() - tick)
                if time.perf_counter() - started >= self.budget_seconds:
                    stop_reason = "budget reached during epoch %d" % self.current_epoch
                    break
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = []
                for _ in range(self.num_val_iterations_per_epoch):
                    tick = time.perf_counter()
                    val_outputs.append(self.validation_step(next(self.dataloader_val)))
                    val_seconds.append(time.perf_counter() - tick)
                self.on_validation_epoch_end(val_outputs)
            epoch = self.current_epoch
            self.on_epoch_end()  # increments current_epoch, saves checkpoint_best
            epoch_seconds.append(time.perf_counter() - epoch_start)
            pseudo_dice.append(float(self.logger.get_value("mean_fg_dice", step=-1)))
            left = self.budget_seconds - (time.perf_counter() - started)
            if stop_reason is None and left <= 0:
                stop_reason = "budget reached after epoch %d" % epoch
            # poly decay over the epochs that fit: done + what the remaining budget holds at the mean epoch time
            mean_epoch = sum(epoch_seconds) / len(epoch_seconds)
            self.num_epochs = self.current_epoch + max(1, int(math.ceil(max(left, 0.0) / mean_epoch)))
            self.lr_scheduler.max_steps = self.num_epochs
        self.num_epochs = self.current_epoch  # on_train_end's checkpoint records the epochs actually done
        self.on_train_end()
        self._write_timing({
            "budget_seconds": self.budget_seconds,
            "training_wall_seconds": time.perf_counter() - started,
            "startup_seconds": ready - started,
            "epochs": self.current_epoch,
            "iterations": len(train_seconds),
            "iterations_per_epoch": self.num_iterations_per_epoch,
            "val_iterations_per_epoch": self.num_val_iterations_per_epoch,
            "val_iterations": len(val_seconds),
            "train_iteration_seconds": train_seconds,
            "val_iteration_seconds": val_seconds,
            "epoch_seconds": epoch_seconds,
            "pseudo_dice": pseudo_dice,
            "batch_size": self.batch_size,
            "patch_size": list(self.configuration_manager.patch_size),
            "stop_reason": stop_reason,
        })

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("medtransfer time cap: final validation skipped (the test split is scored instead)")
'''


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_nnunet_venv(venv: Path = NNUNET_VENV, log: Path | None = None) -> str:
    """nnU-Net's own venv with nnunetv2==2.8.1 (made when missing); returns the installed version."""
    python = venv_python(venv)
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('nnunetv2'))"]
    if python.exists():
        found = subprocess.run(probe, capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == NNUNET_VERSION:
            return NNUNET_VERSION
    print(f"nnU-Net venv: making {venv} (nnunetv2=={NNUNET_VERSION}, torch=={NNUNET_TORCH}; a few minutes)",
          flush=True)
    steps = [[sys.executable, "-m", "venv", str(venv)] if not python.exists() else None,
             [str(python), "-m", "pip", "install", f"torch=={NNUNET_TORCH}"],
             [str(python), "-m", "pip", "install", f"nnunetv2=={NNUNET_VERSION}", f"torch=={NNUNET_TORCH}"]]
    for step in filter(None, steps):
        _run(step, log or venv.with_suffix(".log"), "making nnU-Net's venv")
    found = subprocess.run(probe, capture_output=True, text=True)
    if found.returncode != 0 or found.stdout.strip() != NNUNET_VERSION:
        raise BenchmarkError(f"{venv}: nnunetv2 {NNUNET_VERSION} did not install ({found.stderr.strip()[-300:]})")
    return NNUNET_VERSION


def install_trainer(venv: Path = NNUNET_VENV) -> Path:
    """Write the time-capped trainer into nnU-Net's trainer package, where `-tr` looks for trainers."""
    located = subprocess.run([str(venv_python(venv)), "-c",
                              "import nnunetv2.training.nnUNetTrainer.variants as v; print(v.__path__[0])"],
                             capture_output=True, text=True)
    if located.returncode != 0:
        raise BenchmarkError(f"{venv}: nnunetv2 cannot be imported ({located.stderr.strip()[-300:]})")
    path = Path(located.stdout.strip()) / f"{TRAINER}.py"
    atomic_write(path, lambda stream: stream.write(TRAINER_SOURCE.encode()))
    return path


# --------------------------------------------------------------------------------------------------------------
# 3. Running nnU-Net
# --------------------------------------------------------------------------------------------------------------
def _run(command: list[str], log: Path, what: str, env: dict | None = None) -> float:
    """Run a command with its output in `log`; return its wall seconds; a failure names the log's last lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"  $ {' '.join(command)}  (log: {log})", flush=True)
    start = time.perf_counter()
    with open(log, "a") as stream:
        stream.write(f"\n$ {' '.join(command)}\n")
        stream.flush()
        done = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise BenchmarkError(f"{what} failed (exit {done.returncode}); the end of {log}:\n" + "\n".join(tail))
    return seconds


def nnunet_env(workdir: Path, budget_seconds: float, iterations: int, val_iterations: int) -> dict:
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(workdir / "nnUNet_raw"),
        "nnUNet_preprocessed": str(workdir / "nnUNet_preprocessed"),
        "nnUNet_results": str(workdir / "nnUNet_results"),
        "MEDTRANSFER_NNUNET_BUDGET_SECONDS": str(budget_seconds),
        "MEDTRANSFER_NNUNET_ITERATIONS": str(iterations),
        "MEDTRANSFER_NNUNET_VAL_ITERATIONS": str(val_iterations),
    })
    env.setdefault("nnUNet_n_proc_DA", "1")  # one augmentation worker beside the training process on 2 cores
    env.pop("PYTHONPATH", None)  # medtransfer's environment stays out of nnU-Net's
    return env


def _command(venv: Path, name: str) -> str:
    return str(venv / "bin" / name)


def read_nnunet_plan(preprocessed_dataset: Path, configuration: str) -> dict:
    plans = json.loads((preprocessed_dataset / "nnUNetPlans.json").read_text())
    config = plans["configurations"][configuration]
    arch = config.get("architecture", {})
    kwargs = arch.get("arch_kwargs", {})
    return {
        "configuration": configuration,
        "patch_size": config["patch_size"],
        "spacing": config["spacing"],
        "median_image_size": config.get("median_image_size_in_voxels"),
        "batch_size": config["batch_size"],
        "network": arch.get("network_class_name", "").rsplit(".", 1)[-1],
        "n_stages": kwargs.get("n_stages"),
        "features_per_stage": kwargs.get("features_per_stage"),
        "strides": kwargs.get("strides"),
        "n_conv_per_stage": kwargs.get("n_conv_per_stage"),
        "normalization": config.get("normalization_schemes"),
    }


def score_predictions(manifest: Manifest, raw: Path, predictions: Path, ending: str) -> list[dict]:
    """medtransfer's per-case metrics of nnU-Net's test predictions against the mapped test labels."""
    from medtransfer.evaluation.metrics import case_metrics

    cases = []
    for case_id in manifest.case_ids("test"):
        prediction_path, label_path = predictions / f"{case_id}{ending}", raw / "labelsTs" / f"{case_id}{ending}"
        if not prediction_path.is_file():
            raise BenchmarkError(f"{prediction_path}: nnU-Net wrote no prediction for test case {case_id!r}")
        if ending == ".png":
            prediction, label = _read_png(prediction_path), _read_png(label_path)
            spacing = manifest.content.get("spacing")
        else:
            import nibabel as nib

            prediction_image, label_image = nib.load(str(prediction_path)), nib.load(str(label_path))
            prediction, label = np.asanyarray(prediction_image.dataobj), np.asanyarray(label_image.dataobj)
            spacing = [float(z) for z in label_image.header.get_zooms()[:3]]
        cases.append({"case": case_id, **case_metrics(prediction > 0, label > 0, spacing=spacing)})
    return cases


# --------------------------------------------------------------------------------------------------------------
# 4. Our runs
# --------------------------------------------------------------------------------------------------------------
OUR_PLAN_KEYS = ("patch_size", "target_spacing", "spacing", "batch_size", "filters", "max_epochs",
                 "iterations_per_epoch", "learning_rate", "precision", "num_samples")


def our_run(folder: Path, manifest: Manifest) -> dict:
    """A finished medtransfer run's test Dice per case (its run.json), checked to be this manifest's test split."""
    from medtransfer.training.run_folder import RunFolder

    record, _weights = RunFolder(folder).check_finished("segmentation")
    per_case = record.get("per_case") or []
    cases = {str(case["case"]): case for case in per_case}
    test_ids = manifest.case_ids("test")
    if set(cases) != set(test_ids):
        missing, extra = sorted(set(test_ids) - set(cases))[:3], sorted(set(cases) - set(test_ids))[:3]
        raise BenchmarkError(f"{folder}: its run.json scored other test cases than {manifest.path} (missing "
                             f"{missing}, extra {extra}); give a run of the same manifest")
    config = record.get("config") or {}
    plan = record.get("plan")
    plan = plan.get("plan", plan) if isinstance(plan, dict) else None  # the whole plan.json or its "plan" part
    return {
        "run": str(folder),
        "dice": [float(cases[i]["dice"]) for i in test_ids],
        "wall_time_seconds": record.get("wall_time_seconds"),
        "iterations": record.get("iterations"),
        "epochs": record.get("epochs"),
        "plan": plan if isinstance(plan, dict) else {k: config[k] for k in OUR_PLAN_KEYS if k in config},
    }


def our_plan(manifest: Manifest, plan_file: Path | None, minutes: float) -> tuple[dict | None, str]:
    """Our plan for the manifest and where it came from: `plan_file` (a `medtransfer plan` output), else
    `medtransfer.planning.make_plan` for the same budget where that package exists, else None (the report then
    shows the configuration each --ours run recorded)."""
    try:
        from medtransfer.planning import load_plan, make_plan
    except ImportError:  # a checkout without the planning package
        load_plan = make_plan = None
    if plan_file is not None:
        if load_plan is not None:
            content = load_plan(plan_file)
        else:
            try:
                content = json.loads(Path(plan_file).read_text())
            except (OSError, ValueError) as error:
                raise BenchmarkError(f"{plan_file}: not a readable plan.json ({error})") from None
        plan = content.get("plan", content) if isinstance(content, dict) else None
        if not isinstance(plan, dict):
            raise BenchmarkError(f"{plan_file}: a plan.json is a JSON object")
        return plan, str(plan_file)
    if make_plan is None:
        return None, "the runs' recorded configuration"
    return make_plan(manifest, minutes=minutes)["plan"], f"medtransfer.planning.make_plan(minutes={minutes:g})"


# --------------------------------------------------------------------------------------------------------------
# 5. The report
# --------------------------------------------------------------------------------------------------------------
def _mean_sd(values: list[float]) -> str:
    if not values:
        return "—"
    array = np.asarray(values, dtype=float)
    return f"{array.mean():.3f} ± {array.std(ddof=1) if len(array) > 1 else 0.0:.3f} (n={len(array)})"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min"


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, (list, tuple)):
        return " × ".join(_fmt(v) for v in value) if all(not isinstance(v, (list, dict)) for v in value) else str(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def projection(timing: dict) -> dict:
    """Seconds per iteration (the first training iteration, which warms up, left out) and nnU-Net's default
    schedule (1000 epochs × 250 training + 50 validation iterations) at those rates."""
    train = timing["train_iteration_seconds"][1:] or timing["train_iteration_seconds"]
    val = timing["val_iteration_seconds"] or [0.0]
    per_train, per_val = float(np.median(train)), float(np.median(val))
    return {
        "seconds_per_train_iteration": per_train,
        "seconds_per_val_iteration": per_val,
        "projected_default_schedule_seconds":
            DEFAULT_EPOCHS * (DEFAULT_ITERATIONS * per_train + DEFAULT_VAL_ITERATIONS * per_val),
        "projected_default_epoch_seconds": DEFAULT_ITERATIONS * per_train + DEFAULT_VAL_ITERATIONS * per_val,
    }


def report(result: dict) -> str:
    nn, timing, rates = result["nnunet"]["plan"], result["nnunet"]["timing"], result["nnunet"]["projection"]
    ours = result["ours"]
    our_plan = result.get("our_plan") or (ours[0]["plan"] if ours else {})
    rows = [
        ("patch", _fmt(nn["patch_size"]), _fmt(our_plan.get("patch_size"))),
        ("spacing", _fmt(nn["spacing"]), _fmt(our_plan.get("target_spacing", our_plan.get("spacing")))
         if our_plan.get("target_spacing", our_plan.get("spacing")) or not our_plan else "native"),
        ("batch", _fmt(nn["batch_size"]), _fmt(our_plan.get("batch_size"))),
        ("network", f"{nn['network']}, {nn['n_stages']} stages",
         "DynUNet" + (f", {our_plan['pools'] + 1} stages" if isinstance(our_plan.get("pools"), int) else "")),
        ("features", _fmt(nn["features_per_stage"]), _fmt(our_plan.get("filters"))),
        ("planned schedule", f"{DEFAULT_EPOCHS} epochs × {DEFAULT_ITERATIONS} iterations",
         f"{_fmt(our_plan.get('max_epochs'))} epochs × {_fmt(our_plan.get('iterations_per_epoch'))} iterations"
         if our_plan.get("max_epochs") else "—"),
        ("training wall time", _duration(timing["training_wall_seconds"]),
         ", ".join(_duration(run["wall_time_seconds"]) for run in ours) or "—"),
        ("iterations done", f"{timing['iterations']} ({timing['epochs']} epochs of ≤ {timing['iterations_per_epoch']})",
         ", ".join(_fmt(run["iterations"]) for run in ours) or "—"),
        ("test Dice (mean ± sd)", _mean_sd(result["nnunet"]["dice"]),
         "; ".join(_mean_sd(run["dice"]) for run in ours) or "—"),
    ]
    width = max(len(r[1]) for r in rows) + 2
    lines = [f"nnU-Net v2 {result['nnunet']['version']} ({nn['configuration']}) vs medtransfer on "
             f"{result['manifest']} (test split, {len(result['nnunet']['dice'])} cases"
             f"{'; nnU-Net predicts with its mirroring' if result.get('tta') else ''})",
             f"{'':24}{'nnU-Net':{width}}medtransfer (plan: {result.get('our_plan_source') or '—'})"]
    lines += [f"{name:24}{left:{width}}{right}" for name, left, right in rows]
    lines += [
        f"nnU-Net: {rates['seconds_per_train_iteration']:.2f} s per training iteration (batch {nn['batch_size']}), "
        f"{rates['seconds_per_val_iteration']:.2f} s per validation iteration (medians); stop: {timing['stop_reason']}",
        f"nnU-Net's default schedule (1000 epochs × 250 + 50 iterations) at that rate: "
        f"{_duration(rates['projected_default_schedule_seconds'])} "
        f"({_duration(rates['projected_default_epoch_seconds'])} per epoch)",
        *(["PNG axes: nnU-Net reads (height, width), medtransfer (MONAI's PILReader) (width, height)"]
          if result.get("file_ending") == ".png" else []),
        f"other stages: preprocessing {_duration(result['seconds'].get('preprocess'))}, "
        f"prediction {_duration(result['seconds'].get('predict_tta' if result.get('tta') else 'predict'))}"
        f"{' (with mirroring)' if result.get('tta') else ''}; load average at the end {result['load_average']}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------------------
class StageSeconds(dict):
    """Wall seconds per stage, kept in the work folder so that a resumed benchmark still reports them."""

    def __init__(self, path: Path) -> None:
        super().__init__(json.loads(path.read_text()) if path.is_file() else {})
        self.path = path

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        save_json(self.path, dict(self))


def _check_workdir(workdir: Path, state: dict, overwrite: bool) -> None:
    path = workdir / STATE_NAME
    if path.is_file():
        previous = json.loads(path.read_text())
        previous.pop("tta", None)  # folders written before --tta became a prediction-only choice
        if previous == state:
            return
        if not overwrite:
            changed = sorted(k for k in set(state) | set(previous) if state.get(k) != previous.get(k))
            raise BenchmarkError(f"{workdir}: a side-by-side of another configuration (differs in {changed}); use "
                                 "another --workdir or --overwrite")
        shutil.rmtree(workdir)
    elif workdir.exists() and any(workdir.iterdir()):
        raise BenchmarkError(f"{workdir}: not empty and not a side-by-side work folder; give another --workdir")
    save_json(path, state)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--minutes", type=float, required=True, help="nnU-Net's training wall-time budget")
    parser.add_argument("--configuration", default="2d", choices=("2d", "3d_fullres"))
    parser.add_argument("--workdir", type=Path, default=None,
                        help="default runs/nnunet_side_by_side/<manifest>_<configuration>_<minutes>min")
    parser.add_argument("--ours", nargs="*", type=Path, default=[], help="finished medtransfer run folders")
    parser.add_argument("--ours-plan", type=Path, default=None, help="our plan.json (medtransfer plan)")
    parser.add_argument("--iterations", type=int, default=10,
                        help="training iterations per nnU-Net epoch (its default: 250)")
    parser.add_argument("--val-iterations", type=int, default=2,
                        help="validation iterations per nnU-Net epoch (its default: 50)")
    parser.add_argument("--dataset-id", type=int, default=901)
    parser.add_argument("--tta", action="store_true", help="predict with nnU-Net's mirroring (default: off)")
    parser.add_argument("--venv", type=Path, default=NNUNET_VENV)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.iterations < 1 or args.val_iterations < 1:
        raise BenchmarkError("--minutes must be positive and --iterations, --val-iterations at least 1")

    manifest = open_manifest(args.manifest, args.data_root)
    if args.configuration == "3d_fullres" and manifest.dimensions != 3:
        raise BenchmarkError(f"{manifest.path}: a 2D data set has no 3d_fullres configuration")
    workdir = args.workdir or REPO / "runs" / "nnunet_side_by_side" / (
        f"{manifest.name}_{args.configuration}_{args.minutes:g}min")
    state = {"manifest": manifest.name, "manifest_sha256_12": manifest_digest(manifest),
             "configuration": args.configuration, "minutes": args.minutes, "iterations": args.iterations,
             "val_iterations": args.val_iterations, "dataset_id": args.dataset_id, "nnunetv2": NNUNET_VERSION}
    # ours first: a wrong --ours run or plan fails before nnU-Net spends its budget
    ours = [our_run(folder, manifest) for folder in args.ours]
    plan_ours, plan_source = our_plan(manifest, args.ours_plan, args.minutes)
    _check_workdir(workdir, state, args.overwrite)
    logs, seconds = workdir / "logs", StageSeconds(workdir / "stage_seconds.json")
    name = dataset_folder_name(args.dataset_id, manifest)
    raw, preprocessed = workdir / "nnUNet_raw" / name, workdir / "nnUNet_preprocessed" / name

    print(f"[1/5] raw data set {raw}", flush=True)
    start = time.perf_counter()
    content = write_raw_dataset(manifest, raw)
    if "export" not in seconds:
        seconds["export"] = time.perf_counter() - start
    ending = content["file_ending"]

    print(f"[2/5] nnU-Net venv {args.venv}", flush=True)
    version = ensure_nnunet_venv(args.venv, logs / "venv.log")
    install_trainer(args.venv)
    env = nnunet_env(workdir, args.minutes * 60, args.iterations, args.val_iterations)

    print("[3/5] plan and preprocess", flush=True)
    plans_done = (preprocessed / "nnUNetPlans.json").is_file() and any(
        preprocessed.glob(f"nnUNetPlans_{args.configuration}/*"))
    if not plans_done:
        seconds["preprocess"] = _run(
            [_command(args.venv, "nnUNetv2_plan_and_preprocess"), "-d", str(args.dataset_id), "-c",
             args.configuration, "-np", "2", "-npfp", "2", "--verify_dataset_integrity"],
            logs / "plan_and_preprocess.log", "nnUNetv2_plan_and_preprocess", env)
    write_splits(manifest, preprocessed)
    plan = read_nnunet_plan(preprocessed, args.configuration)

    fold_dir = workdir / "nnUNet_results" / name / f"{TRAINER}__nnUNetPlans__{args.configuration}" / "fold_0"
    print(f"[4/5] train {args.configuration} fold 0 on the CPU for {args.minutes:g} min "
          f"(epochs of {args.iterations} + {args.val_iterations} iterations)", flush=True)
    if not ((fold_dir / "checkpoint_final.pth").is_file() and (fold_dir / "medtransfer_timecap.json").is_file()):
        seconds["train_command"] = _run(
            [_command(args.venv, "nnUNetv2_train"), str(args.dataset_id), args.configuration, "0", "-tr", TRAINER,
             "-device", "cpu"], logs / "train.log", "nnUNetv2_train", env)
    timing = json.loads((fold_dir / "medtransfer_timecap.json").read_text())

    predictions = workdir / ("predictions_test_tta" if args.tta else "predictions_test")
    print(f"[5/5] predict the test split ({len(manifest.case_ids('test'))} cases) and score", flush=True)
    if not all((predictions / f"{i}{ending}").is_file() for i in manifest.case_ids("test")):
        command = [_command(args.venv, "nnUNetv2_predict"), "-i", str(raw / "imagesTs"), "-o", str(predictions),
                   "-d", str(args.dataset_id), "-c", args.configuration, "-f", "0", "-tr", TRAINER,
                   "-chk", "checkpoint_final.pth", "-device", "cpu", "-npp", "1", "-nps", "1"]
        stage = "predict_tta" if args.tta else "predict"
        seconds[stage] = _run(command + ([] if args.tta else ["--disable_tta"]), logs / f"{stage}.log",
                              "nnUNetv2_predict", env)
    cases = score_predictions(manifest, raw, predictions, ending)

    result = {
        "manifest": manifest.name,
        "workdir": str(workdir),
        "file_ending": ending,
        "tta": args.tta,
        "nnunet": {"version": version, "trainer": TRAINER, "plan": plan, "timing": timing,
                   "projection": projection(timing), "per_case": cases, "dice": [c["dice"] for c in cases],
                   "mean_dice": float(np.mean([c["dice"] for c in cases]))},
        "ours": ours,
        "our_plan": plan_ours,
        "our_plan_source": plan_source,
        "seconds": dict(seconds),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "cpu_count": os.cpu_count(),
    }
    save_json(workdir / ("side_by_side_tta.json" if args.tta else "side_by_side.json"), result)
    print(report(result), flush=True)
    return result


if __name__ == "__main__":
    try:
        main()
    except MedtransferError as error:
        sys.exit(f"nnunet_side_by_side: {error}")
