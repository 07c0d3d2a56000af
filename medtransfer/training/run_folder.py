"""One run's output folder, read back: its record, whether it finished, its weights, and its network.

`RunDirectory` (run_directory.py) writes a run folder while the run trains; `RunFolder` is the one reader
of a run folder afterwards (studies, inference, export, CKA). A run is finished when run.json says so *and*
its weights still match the sha256 the record holds: `model.pt` for a segmentation run, `pretrained.pt` for
a pretraining run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from medtransfer.atomic import sha256_of
from medtransfer.errors import MedtransferError

if TYPE_CHECKING:
    from torch import nn

RECORD_NAME = "run.json"
# run.json `config.task` -> the weights file that a finished run of that task leaves
WEIGHTS_NAMES = {"segmentation": "model.pt", "pretraining": "pretrained.pt"}
# a study calls the same two kinds of run "finetune" and "pretrain"
TASK_OF_KIND = {"segmentation": "segmentation", "finetune": "segmentation",
                "pretraining": "pretraining", "pretrain": "pretraining"}


class RunDirectoryError(MedtransferError, RuntimeError):
    """The output folder cannot be used as asked (finished run, or a different configuration)."""


class RunNotFinishedError(RunDirectoryError):
    """A run folder holds no finished run whose weights verify; the message says what is missing."""


class WrongTaskError(RunDirectoryError):
    """A finished run of another task than asked for (e.g. a pretraining run where a segmentation model is
    needed); `task` is the run's own task."""

    def __init__(self, message: str, task: str) -> None:
        super().__init__(message)
        self.task = task


def read_run_record(folder: str | Path) -> dict | None:
    """run.json of `folder`, None when there is none; an unreadable one is a RunDirectoryError."""
    path = Path(folder) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise RunDirectoryError(f"{path}: not a readable run record ({type(error).__name__}: {error}); an "
                                "interrupted write or a damaged file — move it away to start the run afresh") from None
    if not isinstance(record, dict):
        raise RunDirectoryError(f"{path}: not a run record (a JSON object), got {type(record).__name__}")
    return record


class RunFolder:
    """Reads a run folder: `record`, `config`, `task`, `finished(kind)`, `weights(kind)`, `build_network()`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def containing(cls, weights: str | Path) -> RunFolder | None:
        """The run folder a weights file belongs to (`<run>/pretrained.pt`, `<run>/checkpoints/epoch_N.pt`)."""
        weights = Path(weights)
        for folder in (weights.parent, weights.parent.parent):
            if (folder / RECORD_NAME).is_file():
                return cls(folder)
        return None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # The record ----------------------------------------------------------------------------------------------
    @property
    def record_path(self) -> Path:
        return self.path / RECORD_NAME

    @property
    def record(self) -> dict | None:
        """run.json as a dict; None when it is missing or unreadable (a run killed mid-write is not finished)."""
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    @property
    def config(self) -> dict:
        return dict((self.record or {}).get("config") or {})

    @property
    def task(self) -> str:
        return str(self.config.get("task", "segmentation"))

    def weights_path(self, kind: str | None = None) -> Path:
        """Where a finished run of `kind` (a task or a study kind; default: the run's own task) keeps its weights."""
        return self.path / WEIGHTS_NAMES[self._task(kind)]

    def _task(self, kind: str | None) -> str:
        if kind is None:
            kind = self.task
        if kind not in TASK_OF_KIND:
            raise ValueError(f"unknown run kind {kind!r}; one of {', '.join(TASK_OF_KIND)}")
        return TASK_OF_KIND[kind]

    @staticmethod
    def recorded_sha256(record: dict, task: str) -> str | None:
        if task == "pretraining":
            return ((record.get("pretraining") or {}).get("final") or {}).get("sha256")
        return record.get("model_sha256")

    # Finished ------------------------------------------------------------------------------------------------
    def check_finished(self, kind: str | None = None) -> tuple[dict, Path]:
        """run.json and the weights of a finished run of `kind`, the weights verified against their sha256.

        Raises RunNotFinishedError (no record, not finished, weights missing or changed) or WrongTaskError.
        """
        if not self.record_path.is_file():
            raise RunNotFinishedError(f"{self.path}: no run.json; give the output folder of a finished training run")
        try:
            record = read_run_record(self.path)  # a damaged record is named with its problem
        except RunDirectoryError as error:
            raise RunNotFinishedError(str(error)) from None
        task = self._task(kind)
        if record.get("status") != "finished":
            raise RunNotFinishedError(
                f"{self.path}: the run is not finished (status {record.get('status')!r}); its {WEIGHTS_NAMES[task]} "
                "is provisional — resume it with the same command until run.json says finished"
            )
        own_task = (record.get("config") or {}).get("task")  # a record that names no task is taken as asked
        if own_task is not None and own_task != task:
            if task == "segmentation":
                message = f"{self.path}: a {own_task} run; its weights are a starting point for transfer, not a segmentation model"
            else:
                message = f"{self.path}: a {own_task} run, not a {task} run"
            raise WrongTaskError(message, own_task)
        weights = self.path / WEIGHTS_NAMES[task]
        if not weights.is_file():
            raise RunNotFinishedError(f"{self.path}: {weights.name} is missing")
        expected = self.recorded_sha256(record, task)
        if not expected:
            raise RunNotFinishedError(f"{self.record_path}: records no sha256 for {weights.name}; it cannot be verified")
        if sha256_of(weights) != expected:
            raise RunNotFinishedError(f"{weights}: sha256 differs from the one run.json recorded; the file was changed")
        return record, weights

    def finished(self, kind: str | None = None) -> dict | None:
        """run.json of a finished run of `kind` whose weights match their recorded sha256; None otherwise."""
        try:
            return self.check_finished(kind)[0]
        except RunDirectoryError:
            return None

    # The network ---------------------------------------------------------------------------------------------
    def build_network(self, in_channels: int = 1, out_channels: int = 2, init_seed: int | None = None) -> nn.Module:
        """The run's network as train.yaml built it from the recorded configuration (weights not loaded)."""
        # torch/MONAI only when a network is built: studies read many run folders and build none
        from medtransfer.networks.config import build_from_config

        return build_from_config(self.config, in_channels=in_channels, out_channels=out_channels, init_seed=init_seed)
