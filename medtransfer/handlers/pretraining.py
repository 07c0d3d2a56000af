"""Writes encoder checkpoints of a pretraining run on a schedule (epochs 1, 2, 5, 10, ...) plus the final one."""

from __future__ import annotations

import logging
from pathlib import Path

from ignite.engine import Engine, Events
from monai.networks.nets import DynUNet, FlexibleUNet

from medtransfer.atomic import save_torch, sha256_of
from medtransfer.training.distributed import is_main_process
from medtransfer.networks.parts import parts, state_tensors
from medtransfer.training.run_directory import RunDirectory

logger = logging.getLogger("medtransfer.pretraining")

CHECKPOINT_VERSION = 1  # the medtransfer checkpoint format read by medtransfer.transfer.adapters
DEFAULT_SCHEDULE = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class PretrainingCheckpoints:
    """Saves `checkpoints/epoch_NNNN.pt` at the scheduled epochs and `pretrained.pt` at the end.

    Each file is a medtransfer checkpoint: the trained parts of the U-Net under its own tensor names, the
    objective, the epoch and the network's description — loadable by every transfer strategy, with
    `weights_only=True`. The list of written checkpoints goes into run.json (`pretraining`).
    """

    def __init__(self, run_directory: RunDirectory, objective, source: dict | None = None,
                 checkpoint_epochs=DEFAULT_SCHEDULE) -> None:
        self.run_directory = run_directory
        self.objective = objective
        self.source = source or {}
        self.schedule = sorted({int(e) for e in checkpoint_epochs})

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._scheduled)
        trainer.add_event_handler(Events.COMPLETED, self._final)

    def _payload(self, epoch: int) -> dict:
        unet = self.objective.unet
        tensors = state_tensors(unet)
        split = parts(unet)
        kept = {name: tensors[name].detach().cpu().clone()
                for part in self.objective.trained_parts for name in split[part]}
        family = "dynunet" if isinstance(unet, DynUNet) else "resnet_unet" if isinstance(unet, FlexibleUNet) else "?"
        return {
            "medtransfer_checkpoint": CHECKPOINT_VERSION,
            "state_dict": kept,
            "trained_parts": list(self.objective.trained_parts),
            "objective": self.objective.name,
            "epoch": epoch,
            "network": {"family": family, "spatial_dims": _spatial_dims(tensors)},
        }

    def _write(self, relative: str, epoch: int) -> dict:
        path = Path(self.run_directory.path) / relative
        save_torch(path, self._payload(epoch))
        return {"epoch": epoch, "path": relative, "sha256": sha256_of(path)}

    def _scheduled(self, trainer: Engine) -> None:
        epoch = int(trainer.state.epoch)
        if epoch in self.schedule and is_main_process():
            entry = self._write(f"checkpoints/epoch_{epoch:04d}.pt", epoch)
            logger.info("pretraining checkpoint at epoch %d: %s", epoch, entry["path"])

    def _final(self, trainer: Engine) -> None:
        if not is_main_process():
            return
        final = self._write("pretrained.pt", int(trainer.state.epoch))
        folder = Path(self.run_directory.path)
        scheduled = [  # from disk, so checkpoints written before an interruption are listed too
            {"epoch": int(path.stem.split("_")[1]), "path": str(path.relative_to(folder)), "sha256": sha256_of(path)}
            for path in sorted((folder / "checkpoints").glob("epoch_*.pt"))
        ]
        self.run_directory.notes["pretraining"] = {
            "objective": self.objective.name,
            "trained_parts": list(self.objective.trained_parts),
            "source": self.source,
            "details": self.objective.details,
            "checkpoints": scheduled,
            "final": final,
        }


def _spatial_dims(tensors) -> int:
    return next(t.ndim - 2 for t in tensors.values() if t.ndim in (4, 5))
