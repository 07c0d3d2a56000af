"""`medtransfer export ... --monailabel-app APP_DIR`: a MONAI Label app folder that serves an exported bundle.

    APP_DIR/main.py            a MONAILabelApp subclass with one infer task: MONAI Label's own BundleInferTask
    APP_DIR/model/NAME/        the exported bundle, unchanged (its configs, scripts/, weights and model card)
    APP_DIR/README.md          for a clinician: install, start the server, connect 3D Slicer, what the model knows
    APP_DIR/requirements.txt   the MONAI Label client's pins (its own virtual environment, not medtransfer's)

Nothing in the folder imports medtransfer: MONAI Label builds the bundle's ``network_def``, preprocessing,
inferer and postprocessing itself (``monailabel start_server --app APP_DIR --studies SCANS --conf models NAME``),
and 3D Slicer's MONAI Label module calls ``POST /infer/NAME?image=ID``. A folder that is not empty is refused
unless ``overwrite``, and then only if it is an app this module wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import medtransfer
from medtransfer.errors import MedtransferError

# the client versions that run an exported bundle (../shared/reference/clinical_clients.md): torchvision 0.28 with
# torch 2.13 fails on import ("operator torchvision::nms does not exist"); pydicom 3 (what monailabel 0.8.5 pulls)
# removed the module pydicom-seg 0.4.1 imports, so `monailabel start_server` fails to start without pydicom 2
MONAILABEL_PACKAGES = ("torch==2.14.1", "torchvision==0.29.1", "monailabel==0.8.5", "pydicom==2.4.5")
MARKER = "# written by `medtransfer export --monailabel-app`"
DEFAULT_PORT = 8000


class MonaiLabelAppError(MedtransferError, ValueError):
    """The MONAI Label app folder cannot be written (not empty, not ours, a bad model name)."""


@dataclass(frozen=True)
class MonaiLabelApp:
    folder: Path
    name: str  # the model's name in MONAI Label and 3D Slicer

    @property
    def start_command(self) -> str:
        return (f"monailabel start_server --app {self.folder} --studies SCANS_FOLDER --conf models {self.name} "
                f"--host 127.0.0.1 --port {DEFAULT_PORT}")


def model_name(metadata: dict, requested: str | None = None) -> str:
    """``requested``, else ``<label>_segmentation`` from the bundle's output channel 1 (MONAI Label reads a name
    with "segmentation" in it as a segmentation model)."""
    if requested is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", requested):
            raise MonaiLabelAppError(f"--model-name {requested!r}: use letters, digits, _ and - (it is part of a URL)")
        return requested
    label = metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def", {}).get(
        "1", "foreground")
    stem = re.sub(r"[^a-z0-9]+", "_", str(label).lower()).strip("_") or "foreground"
    return f"{stem[:48]}_segmentation"


def check_app_folder(folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """Before anything is exported: APP_DIR is absent or empty, or ``overwrite`` and an app written here."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MonaiLabelAppError(f"{folder}: exists and is not a folder; choose another --monailabel-app")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise MonaiLabelAppError(f"{folder}: not empty; choose an empty or new --monailabel-app folder, or pass "
                                     f"--overwrite to replace an app medtransfer wrote there")
        main = folder / "main.py"
        if not (main.is_file() and MARKER in main.read_text(errors="replace")):
            raise MonaiLabelAppError(f"{folder}: not a MONAI Label app written by medtransfer (no main.py of ours); "
                                     f"refusing to replace it")
    return folder


def _python_text(value) -> str:
    return json.dumps(value, ensure_ascii=True)  # a JSON string is a Python string literal


def main_py(name: str, metadata: dict) -> str:
    return f'''"""MONAI Label app serving one model, {name}: the MONAI bundle in model/{name}.

{MARKER} (medtransfer {medtransfer.__version__}).
MONAI Label's own BundleInferTask runs the bundle's configs/inference.json (network, preprocessing, sliding-window
inferer, postprocessing); this file imports monailabel only. Start it with

    monailabel start_server --app THIS_FOLDER --studies SCANS_FOLDER --conf models {name}

and connect 3D Slicer's MONAI Label module to the server (README.md).
"""

import logging
import os

from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.infer.bundle import BundleInferTask

logger = logging.getLogger(__name__)

MODEL = {_python_text(name)}
TITLE = {_python_text(str(metadata.get("name", name)))}
DESCRIPTION = {_python_text(str(metadata.get("description", "")))}
VERSION = {_python_text(str(metadata.get("version", "0.1.0")))}


class SegmentationApp(MONAILabelApp):
    """One auto-segmentation model; the studies folder (or DICOMweb server) holds the scans to segment."""

    def __init__(self, app_dir, studies, conf):
        self.model_dir = os.path.join(app_dir, "model", MODEL)
        requested = [m.strip() for m in (conf.get("models") or MODEL).split(",") if m.strip()]
        unknown = [m for m in requested if m not in (MODEL, "all")]
        if unknown:
            raise ValueError(f"--conf models {{','.join(unknown)}}: this app serves only {{MODEL!r}}")
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name=TITLE, description=DESCRIPTION,
                         version=VERSION)

    def init_infers(self):
        task = BundleInferTask(self.model_dir, self.conf)
        if not task.is_valid():
            raise RuntimeError(f"{{self.model_dir}}: MONAI Label cannot read this bundle (configs/inference.json, "
                               f"models/model.pt)")
        logger.info("serving %s from %s", MODEL, self.model_dir)
        return {{MODEL: task}}
'''


def readme(name: str, metadata: dict) -> str:
    data = metadata.get("training_data") or {}
    metrics = metadata.get("eval_metrics") or {}
    pre = metadata.get("preprocessing") or {}
    label = (data.get("label_meaning") or {}).get("1") or name
    dice = metrics.get("mean_dice")
    performance = (f"mean Dice {dice:.3f} on {metrics.get('n_test_cases')} test cases of the same data set"
                   if isinstance(dice, (int, float)) else
                   f"no test metrics of its own (see model/{name}/docs/README.md)")
    install = " ".join(MONAILABEL_PACKAGES)
    return f"""# {metadata.get('name', name)} — MONAI Label app

**{metadata.get('intended_use', 'Research use only.')}**

This folder lets 3D Slicer (or OHIF) segment scans with the model **{name}** through a MONAI Label server on
your own computer. Nothing is uploaded anywhere: the server reads the scans from a folder you choose and sends
the masks back to Slicer.

## What the model does and what it was trained on
- It outlines **{label}** in {pre.get('spatial_dims', 3)}D {data.get('modality') or ''} images.
- Trained on **{data.get('manifest')}** ({data.get('source')}; licence {data.get('license')}),
  {data.get('n_training')} training cases{', resampled to ' + str(pre.get('target_spacing')) + ' mm' if pre.get('target_spacing') else ''}.
- How well: {performance}. Expect lower values on other scanners, protocols or patients: check every mask.
- Details (network, preprocessing, checksums, limitations): `model/{name}/docs/README.md`.

## 1. Install (once)
Python 3.10 or newer; a virtual environment keeps MONAI Label's packages apart from everything else:
```bash
python3 -m venv monailabel-env
monailabel-env/bin/pip install {install}
```
(about 6 GB; it runs on a normal CPU, a GPU is used when there is one.)

## 2. Start the server
Put the scans (NIfTI `.nii.gz` files) in a folder, e.g. `scans/`, then:
```bash
monailabel-env/bin/monailabel start_server --app THIS_FOLDER --studies scans/ --conf models {name} \\
    --host 127.0.0.1 --port {DEFAULT_PORT}
```
Wait for `Application startup complete`. Stop it with Ctrl+C.

## 3. Connect 3D Slicer
1. Slicer → Extensions Manager → install **MONAILabel**, restart Slicer.
2. Modules → Active Learning → **MONAI Label**; server `http://127.0.0.1:{DEFAULT_PORT}`, click the refresh button.
3. Click **Next Sample** (or load one of the scans), choose the model **{name}** under *Auto Segmentation* and
   click **Run**. The mask appears as a segment named {name.split('_segmentation')[0]}; edit it with the
   Segment Editor and **Submit Label** to keep it in `scans/labels/final/`.

The same call from a script: `curl -X POST "http://127.0.0.1:{DEFAULT_PORT}/infer/{name}?image=SCAN_ID&output=image"
-o mask.nii.gz` (SCAN_ID: the file name without `.nii.gz`).

A scan the model cannot read (damaged file, wrong dimensions) gets an error message in Slicer; the server keeps
running for the other scans.
"""


def write_monailabel_app(bundle: str | os.PathLike, folder: str | os.PathLike, name: str | None = None,
                         overwrite: bool = False) -> MonaiLabelApp:
    """Write the app for the exported ``bundle`` into ``folder`` (atomically: staged beside it, then moved)."""
    bundle, folder = Path(bundle), check_app_folder(folder, overwrite)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    name = model_name(metadata, name)
    staging = folder.with_name(f".{folder.name}.monailabel-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(bundle, staging / "model" / name)
        (staging / "main.py").write_text(main_py(name, metadata))
        (staging / "README.md").write_text(readme(name, metadata))
        (staging / "requirements.txt").write_text("\n".join(MONAILABEL_PACKAGES) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return MonaiLabelApp(folder=folder, name=name)
