"""Resume and best-model handlers that write atomically and load with weights_only=True."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.handlers import ValidationHandler

from medtransfer.atomic import save_torch
from medtransfer.training.distributed import is_main_process
from medtransfer.training.run_directory import RunDirectory

logger = logging.getLogger("medtransfer.handlers")


class ResumableCheckpoint:
    """Saves the whole training state after every epoch and restores it when a run is resumed.

    Attach it first in the trainer's handler list: other STARTED handlers (e.g. a weight transfer) look at
    `run_directory.resumed` and must not act over restored weights. The engine's elapsed wall time is
    carried across resumes.
    """

    def __init__(self, run_directory: RunDirectory, save_dict: dict[str, Any]) -> None:
        self.run_directory = run_directory
        self.save_dict = {k: v for k, v in save_dict.items() if v is not None}
        self.elapsed_before = 0.0
        self._started = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.restore)
        # Registered at STARTED, i.e. after every handler attached at construction, so the epoch's checkpoint
        # is written after that epoch's validation and best-model update.
        engine.add_event_handler(Events.STARTED, self._register_save)

    def _register_save(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.save, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._started)

    def restore(self, engine: Engine) -> None:
        self._started = time.perf_counter()
        path = self.run_directory.checkpoint_path
        if not (self.run_directory.resumed and path.exists()):
            return
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load={**self.save_dict, "trainer": engine}, checkpoint=checkpoint)
        engine.state.max_epochs = max_epochs  # allow extending a run by resuming with more epochs
        self.elapsed_before = float(checkpoint.get("elapsed_seconds", 0.0))
        logger.info("resumed %s at epoch %d", path, engine.state.epoch)

    def save(self, engine: Engine) -> None:
        if not is_main_process():
            return
        state = {name: obj.state_dict() for name, obj in self.save_dict.items()}
        state["trainer"] = engine.state_dict()
        state["elapsed_seconds"] = self.elapsed()
        save_torch(self.run_directory.checkpoint_path, state)


class BestModelSaver:
    """Keeps `model.pt` = the weights with the best validation metric so far (a plain state dict).

    Its state (best value, epoch, history of the metric) is part of the resumable checkpoint, so a resumed
    run does not forget its best model. The history also gives validation curves for reports.
    """

    def __init__(self, run_directory: RunDirectory, network: torch.nn.Module, metric_name: str = "val_mean_dice"):
        self.run_directory = run_directory
        self.network = network
        self.metric_name = metric_name
        self.best_value = float("-inf")
        self.best_epoch = 0
        self.history: list[tuple[int, float]] = []

    def attach(self, evaluator: Engine) -> None:
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, evaluator: Engine) -> None:
        value = float(evaluator.state.metrics[self.metric_name])
        epoch = int(evaluator.state.epoch)  # MONAI's ValidationHandler runs the evaluator at the trainer's epoch
        self.history.append((epoch, value))
        if value > self.best_value:
            self.best_value, self.best_epoch = value, epoch
            if is_main_process():
                save_torch(self.run_directory.model_path, _plain_state_dict(self.network))

    def state_dict(self) -> dict:
        return {
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "history": torch.tensor(self.history, dtype=torch.float64).reshape(-1, 2),
        }

    def load_state_dict(self, state: dict) -> None:
        self.best_value = float(state["best_value"])
        self.best_epoch = int(state["best_epoch"])
        self.history = [(int(e), float(v)) for e, v in state["history"].tolist()]


def _plain_state_dict(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    module = network.module if hasattr(network, "module") else network
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


CONVERGENCE_DELTA = 0.002  # a smoothed validation Dice that rises by less than this is on its plateau


class EarlyStopping:
    """Stops training on a plateau of the smoothed validation Dice, and says whether the run converged.

    The smoothed value is the moving mean of the last `smoothing` validations (1: the raw value). An
    improvement is a smoothed value above the best so far by more than `min_delta`. Training stops once
    `patience` validations in a row bring none, but never before epoch `min_epochs` (None patience: never stops).
    With the defaults (smoothing 1, min_delta 0, min_epochs 0) this is the classic rule on the raw metric.

    It reads the best-model saver's history, which is part of the resumable checkpoint, so a resumed run
    continues the same count. `ValidationWithEarlyStopping` calls it right after each validation; `max_epochs`
    stays the budget every arm shares. Every DDP rank sees the same (gathered) metric, so all ranks stop together.
    `convergence()` is the honest record: stopped on the plateau, or the budget ended on one, or still improving.
    """

    def __init__(self, best_model: BestModelSaver, patience: int | None = None, min_epochs: int = 0,
                 smoothing: int = 1, min_delta: float = 0.0) -> None:
        if patience is not None and (isinstance(patience, bool) or int(patience) != patience or patience < 1):
            raise ValueError(f"early_stop_patience must be a positive integer or null (off), got {patience!r}")
        if int(smoothing) < 1 or int(min_epochs) < 0 or float(min_delta) < 0:
            raise ValueError(f"early stopping needs smoothing >= 1, min_epochs >= 0 and min_delta >= 0, got "
                             f"{smoothing!r}, {min_epochs!r}, {min_delta!r}")
        self.best_model = best_model
        self.patience = None if patience is None else int(patience)
        self.min_epochs = int(min_epochs)
        self.smoothing = int(smoothing)
        self.min_delta = float(min_delta)
        self.stopped_epoch: int | None = None

    def smoothed(self) -> list[tuple[int, float]]:
        """(epoch, moving mean of the last `smoothing` validation values) for every validation so far."""
        values = [v for _, v in self.best_model.history]
        windows = [values[max(0, i - self.smoothing + 1):i + 1] for i in range(len(values))]
        return [(epoch, sum(w) / len(w)) for (epoch, _), w in zip(self.best_model.history, windows)]

    def _last_improvement(self, delta: float) -> tuple[int, float]:
        """(index of the last validation that improved the smoothed best by more than `delta`, that best)."""
        best, index = float("-inf"), -1
        for i, (_, value) in enumerate(self.smoothed()):
            if value > best + delta:
                best, index = value, i
        return index, best

    def validations_without_improvement(self) -> int:
        index, _ = self._last_improvement(self.min_delta)
        return len(self.best_model.history) - 1 - index

    def __call__(self, trainer: Engine) -> None:
        if self.patience is None or not self.best_model.history or trainer.state.epoch < self.min_epochs:
            return
        if self.validations_without_improvement() >= self.patience:
            self.stopped_epoch = int(trainer.state.epoch)
            logger.info(
                "early stopping at epoch %d: no better smoothed %s in %d validations (best raw %.4f at epoch %d)",
                self.stopped_epoch, self.best_model.metric_name, self.patience, self.best_model.best_value,
                self.best_model.best_epoch,
            )
            if is_main_process():
                best = self.best_model.best_epoch
                print(f"medtransfer: early stop at epoch {self.stopped_epoch} (best epoch {best}; plateau of the "
                      f"{self.smoothing}-validation mean)", flush=True)
            trainer.terminate()

    def convergence(self) -> dict:
        """run.json["converged"]: {"value": bool, "reason": str}, judged on the smoothed validation Dice."""
        series = self.smoothed()
        if not series:
            return {"value": False, "reason": "no validation ran, so nothing shows a plateau"}
        if self.stopped_epoch is not None:
            return {"value": True, "reason": f"stopped on the plateau at epoch {self.stopped_epoch}: no rise of the "
                    f"{self.smoothing}-validation mean by more than {self.min_delta} in {self.patience} validations "
                    f"(smoothed best {max(v for _, v in series):.4f})"}
        window = self.patience or max(5, len(series) // 5)
        if len(series) <= window:
            return {"value": False, "reason": f"only {len(series)} validations: too few to show a plateau over "
                    f"{window}"}
        delta = max(self.min_delta, CONVERGENCE_DELTA)
        gain = max(v for _, v in series[-window:]) - max(v for _, v in series[:-window])
        if gain <= delta:
            return {"value": True, "reason": f"the budget ended on a plateau: the smoothed validation Dice rose by "
                    f"{gain:+.4f} (<= {delta}) over the last {window} validations"}
        return {"value": False, "reason": f"still improving when the budget ended: the smoothed validation Dice rose "
                f"by {gain:+.4f} over the last {window} validations"}

    def record(self) -> dict:
        return {"patience": self.patience, "min_epochs": self.min_epochs, "smoothing": self.smoothing,
                "min_delta": self.min_delta, "stopped_early": self.stopped_epoch is not None,
                "stopped_epoch": self.stopped_epoch}


class ValidationWithEarlyStopping(ValidationHandler):
    """MONAI's ValidationHandler, then the early-stopping decision on the validation that just ran.

    One handler for both, so the decision always follows its validation, on every rank of a DDP run.
    """

    def __init__(self, interval: int, validator=None, epoch_level: bool = True, exec_at_start: bool = False,
                 early_stop: EarlyStopping | None = None) -> None:
        super().__init__(interval=interval, validator=validator, epoch_level=epoch_level, exec_at_start=exec_at_start)
        self.early_stop = early_stop
        self.seconds = 0.0  # wall time spent validating in this process (RunRecord reports its share)

    def __call__(self, engine: Engine) -> None:
        started = time.perf_counter()
        super().__call__(engine)
        self.seconds += time.perf_counter() - started
        if self.early_stop is not None:
            self.early_stop(engine)
