"""The folder of one run: refuses to overwrite a finished run, resumes an unfinished one, records provenance.

Layout: `run.json` (status, configuration and its hash, metrics), `model.pt` (best weights, plain state
dict), `checkpoint.pt` (last epoch: model, optimizer, scheduler, engine state — removed once finished),
`summary.json` (per-case test metrics), `tensorboard/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from medtransfer.atomic import save_json
from medtransfer.folder_lock import LOCK_NAME, FolderLock  # noqa: F401  (re-exported)
from medtransfer.training.run_folder import RunDirectoryError, read_run_record

logger = logging.getLogger("medtransfer.training")

# Keys that say where or how fast a run executes, not what it computes: left out of the configuration hash.
MACHINE_KEYS = ("data_root", "device", "num_workers", "output_dir")


def config_hash(run_params: dict) -> str:
    relevant = {k: v for k, v in run_params.items() if k not in MACHINE_KEYS}
    text = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def library_versions() -> dict[str, str]:
    import monai
    import numpy
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__}
    versions["numpy"] = numpy.__version__
    try:
        import ignite

        versions["pytorch-ignite"] = ignite.__version__
    except ImportError:  # pragma: no cover - ignite is a dependency
        pass
    import medtransfer

    versions["medtransfer"] = medtransfer.__version__
    return versions


def _barrier() -> None:
    from medtransfer.training.distributed import is_distributed

    if is_distributed():
        import torch.distributed as dist

        dist.barrier()


class RunDirectory:
    """Guards and describes `output_dir` for one bundle execution."""

    def __init__(self, path: str | Path, run_params: dict[str, Any], overwrite: bool = False) -> None:
        self.path = Path(path)
        self.run_params = {k: v for k, v in dict(run_params).items()}
        self.overwrite = bool(overwrite)
        self.config_hash = config_hash(self.run_params)
        self.resumed = False
        self.notes: dict[str, Any] = {}  # extra run.json fields other handlers contribute (e.g. a transfer report)
        self._prepared = False
        self._lock: FolderLock | None = None

    # File locations -------------------------------------------------------------------------------------
    @property
    def record_path(self) -> Path:
        return self.path / "run.json"

    @property
    def model_path(self) -> Path:
        return self.path / "model.pt"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def tensorboard_dir(self) -> str:
        return str(self.path / "tensorboard")

    # Life cycle ------------------------------------------------------------------------------------------
    def prepare(self) -> "RunDirectory":
        """Create the folder; refuse a finished run (unless overwrite) or a different unfinished one."""
        if self._prepared:
            return self
        from medtransfer.training.distributed import is_main_process

        if is_main_process():  # one writer per folder: rank 0 of a DDP run, never two runs at once
            from medtransfer.training.command_line import check_command_line

            check_command_line()  # `--max_epoch 1` is an error, not a 30-epoch run
            self._lock = FolderLock(self.path, "run folder").acquire()
        record = read_run_record(self.path)
        if record and record.get("status") == "finished":
            if not self.overwrite:
                dice = (record.get("metrics") or {}).get("mean_dice")
                raise RunDirectoryError(
                    f"{self.path} holds a finished run (finished {record.get('finished_at')}, mean test Dice {dice}); "
                    "it is never overwritten silently: choose another --output_dir, or pass --overwrite true"
                )
            logger.warning("overwriting the finished run in %s (overwrite=true)", self.path)
            self._clear_on_main()
            record = None
        if record and self.checkpoint_path.exists():
            if record.get("config_hash") != self.config_hash:
                changed = sorted(
                    key
                    for key in set(record.get("config", {})) | set(self.run_params)
                    if key not in MACHINE_KEYS and record.get("config", {}).get(key) != self.run_params.get(key)
                )
                raise RunDirectoryError(
                    f"{self.path} holds an unfinished run with another configuration (changed: {', '.join(changed)}); "
                    "resume it with the same settings, choose another --output_dir, or pass --overwrite true"
                )
            self.resumed = True
            logger.info("resuming the unfinished run in %s from %s", self.path, self.checkpoint_path)
        elif record and self.overwrite:
            self._clear_on_main()
        self.path.mkdir(parents=True, exist_ok=True)
        started = record.get("started_at") if self.resumed and record else time.strftime("%Y-%m-%dT%H:%M:%S")
        self.write_record({"status": "running", "started_at": started, "resumed": self.resumed})
        _barrier()  # every rank decided from the same folder state before training starts
        self._prepared = True
        return self

    def _clear_on_main(self) -> None:
        from medtransfer.training.distributed import is_main_process

        _barrier()  # all ranks have read the old record before rank 0 removes it
        if is_main_process():
            self._clear()

    def _clear(self) -> None:
        for name in ("run.json", "model.pt", "checkpoint.pt", "summary.json", "transfer.json"):
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / "tensorboard", ignore_errors=True)

    def write_record(self, fields: dict[str, Any]) -> dict:
        """Merge `fields` into run.json (atomically), always with the configuration and its hash (rank 0 only)."""
        from medtransfer.training.distributed import is_main_process

        if not is_main_process():
            return {}
        record = read_run_record(self.path) or {}
        record.update(fields)
        record.update(
            {
                "output_dir": str(self.path.resolve()),
                "config": self.run_params,
                "config_hash": self.config_hash,
                "versions": library_versions(),
                # CPU results depend on the thread count (reduction order): record it next to the versions
                "torch_threads": _torch_threads(),
            }
        )
        save_json(self.record_path, record)
        if record.get("status") == "finished" and self._lock is not None:
            self._lock.release()  # the finished run is final; another process may now read or overwrite it
            self._lock = None
        return record
