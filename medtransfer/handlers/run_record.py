"""Finishes a run: test evaluation with the best weights, summary.json and the final run.json."""

from __future__ import annotations

import logging
import math
import sys
import time

import torch
from ignite.engine import Engine, Events

from medtransfer.evaluation.summary import write_summary
from medtransfer.handlers.checkpoint import BestModelSaver, ResumableCheckpoint
from medtransfer.handlers.metrics import CaseMetrics
from medtransfer.atomic import save_torch, sha256_of
from medtransfer.training.distributed import is_main_process
from medtransfer.training.run_directory import RunDirectory
from medtransfer.training.weights import load_weights

logger = logging.getLogger("medtransfer.handlers")


def batch_loss(output) -> torch.Tensor:
    """The loss of one training iteration from the engine output (a dict without decollation, else a list)."""
    loss = output["loss"] if isinstance(output, dict) else output[0]["loss"]
    return loss.detach() if isinstance(loss, torch.Tensor) else loss


def cache_megabytes(dataset) -> float:
    """Memory held by a MONAI CacheDataset's cache (its tensors and arrays); 0 for a dataset without one."""
    total = 0
    for item in getattr(dataset, "_cache", None) or []:
        for value in item.values() if isinstance(item, dict) else [item]:
            if isinstance(value, torch.Tensor):
                total += value.element_size() * value.nelement()
            elif hasattr(value, "nbytes"):
                total += int(value.nbytes)
    return total / 2**20


class EpochLoss:
    """The mean training loss of every epoch, in `engine.state.metrics["train_loss"]` and in a history.

    Attach it before the StatsHandler / TensorBoardStatsHandler of the trainer: they write
    `engine.state.metrics` at EPOCH_COMPLETED, so the log and TensorBoard get the epoch mean. Its history is
    part of the resumable checkpoint (`state_dict`), so a resumed run keeps the curve of its earlier epochs.
    """

    def __init__(self, metric_name: str = "train_loss") -> None:
        self.metric_name = metric_name
        self.history: list[tuple[int, float]] = []
        self._sum = 0.0
        self._count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._add)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._complete)

    def _reset(self, _engine: Engine) -> None:
        self._sum, self._count = 0.0, 0

    def _add(self, engine: Engine) -> None:
        self._sum += float(batch_loss(engine.state.output))
        self._count += 1

    def _complete(self, engine: Engine) -> None:
        mean = self._sum / self._count if self._count else math.nan
        engine.state.metrics[self.metric_name] = mean
        self.history.append((int(engine.state.epoch), mean))

    def last(self) -> float | None:
        return self.history[-1][1] if self.history else None

    def state_dict(self) -> dict:
        return {"history": torch.tensor(self.history, dtype=torch.float64).reshape(-1, 2)}

    def load_state_dict(self, state: dict) -> None:
        self.history = [(int(e), float(v)) for e, v in state["history"].tolist()]


class TrainingProgress:
    """Per-iteration progress inside an epoch (ignite's tqdm ProgressBar with the running loss).

    Shown only when `enabled` and stderr is a terminal: logs of studies and CI stay one line per epoch.
    """

    def __init__(self, enabled: bool = True, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(enabled) and is_main_process() and bool(getattr(self.stream, "isatty", lambda: False)())

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        from ignite.handlers import ProgressBar

        ProgressBar(persist=False, file=self.stream).attach(
            engine, output_transform=lambda output: {"loss": float(batch_loss(output))}
        )


class RunRecord:
    """On trainer COMPLETED: reload `model.pt`, evaluate the test split per case, write the run's record.

    Everything a study or a model card needs later is in `run.json`; the resumable checkpoint is removed
    once the run is finished, since `model.pt` is what a finished run is for.
    """

    def __init__(
        self,
        run_directory: RunDirectory,
        network: torch.nn.Module,
        checkpoint: ResumableCheckpoint,
        test_evaluator: Engine | None = None,
        case_metrics: CaseMetrics | None = None,
        best_model: BestModelSaver | None = None,
        data: dict | None = None,
        epoch_loss: EpochLoss | None = None,
        precision=None,
        early_stop=None,
        cached_datasets: dict | None = None,
        validation=None,
        plan=None,
    ) -> None:
        self.run_directory = run_directory
        self.network = network
        self.test_evaluator = test_evaluator
        self.case_metrics = case_metrics
        self.best_model = best_model
        self.checkpoint = checkpoint
        self.data = data or {}
        self.epoch_loss = epoch_loss
        self.precision = precision  # a medtransfer.training.precision.PrecisionChoice
        self.early_stop = early_stop  # a medtransfer.handlers.EarlyStopping
        self.validation = validation  # a medtransfer.handlers.ValidationWithEarlyStopping: its wall time
        self.plan = plan  # a medtransfer.planning.PlannedDefaults: the plan this run used (or none)
        self.cached_datasets = cached_datasets or {}  # name -> CacheDataset: its memory is printed and recorded
        self.epoch_seconds: list[float] = []
        self._epoch_started = 0.0

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.STARTED, self._record_settings)
        trainer.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._end_epoch)
        trainer.add_event_handler(Events.COMPLETED, self.finish)

    def _start_epoch(self, _trainer: Engine) -> None:
        self._epoch_started = time.perf_counter()

    def _settings(self) -> dict:
        fields = {}
        if self.precision is not None:
            fields["precision"] = self.precision.record()
        if self.early_stop is not None:
            fields["early_stopping"] = self.early_stop.record()
        if self.plan is not None:
            fields["plan"] = self.plan.record()
        from medtransfer.data.paths import outside_root_allowed

        if outside_root_allowed():  # --allow-outside-root: the data may have come from anywhere
            fields["allow_outside_root"] = True
        return fields

    def _record_settings(self, _trainer: Engine) -> None:
        fields = self._settings()
        if self.cached_datasets:
            sizes = {name: round(cache_megabytes(dataset), 1) for name, dataset in self.cached_datasets.items()}
            fields["data_cache_megabytes"] = sizes
            if is_main_process():  # the cache is filled once at construction: this is its peak
                listing = ", ".join(f"{name} {mb} MB" for name, mb in sizes.items())
                print(f"medtransfer: data cache {sum(sizes.values()):.1f} MB ({listing})", flush=True)
        self.run_directory.write_record(fields)

    def history(self) -> list[dict]:
        """One entry per epoch: the mean training loss and, where it ran, the validation Dice."""
        validation = dict(self.best_model.history) if self.best_model is not None else {}
        losses = self.epoch_loss.history if self.epoch_loss is not None else []
        return [
            {"epoch": epoch, "train_loss": loss, **({"val_dice": validation[epoch]} if epoch in validation else {})}
            for epoch, loss in losses
        ]

    def _end_epoch(self, trainer: Engine) -> None:
        seconds = time.perf_counter() - self._epoch_started
        self.epoch_seconds.append(seconds)
        if not is_main_process():
            return
        loss = self.epoch_loss.last() if self.epoch_loss is not None else None
        validation = self.best_model.history[-1] if self.best_model is not None and self.best_model.history else None
        parts = [f"{seconds:.1f} s"]
        if loss is not None:
            parts.append(f"train loss {loss:.4f}")
        if validation is not None and validation[0] == trainer.state.epoch:
            parts.append(f"val Dice {validation[1]:.4f}")
        # one line per epoch: progress for people and for `medtransfer study`
        print(f"medtransfer: epoch {trainer.state.epoch}/{trainer.state.max_epochs} done ({', '.join(parts)})",
              flush=True)
        if self.epoch_loss is not None:  # the curve so far, readable while the run goes on
            self.run_directory.write_record({"history": self.history()})

    def finish(self, trainer: Engine) -> None:
        if not is_main_process():  # rank 0 evaluates and writes; the replicas are identical
            return
        run = self.run_directory
        fields = {
            "status": "finished",
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "data": self.data,
            "epochs": int(trainer.state.epoch),
            "iterations": int(trainer.state.iteration),
            "wall_time_seconds": self.checkpoint.elapsed(),
            "seconds_per_epoch": self.epoch_seconds,
            "history": self.history(),
            **self._settings(),
        }
        if self.early_stop is not None:
            fields["converged"] = self.early_stop.convergence()
        if self.validation is not None:
            wall = max(self.checkpoint.elapsed(), 1e-9)
            fields["validation_seconds"] = self.validation.seconds
            fields["validation_share"] = self.validation.seconds / wall
            converged = fields.get("converged", {})
            print(f"medtransfer: validation took {self.validation.seconds:.0f} s of {wall:.0f} s "
                  f"({fields['validation_share']:.1%} of the wall time); converged: "
                  f"{converged.get('value')} ({converged.get('reason', 'no early-stopping rule')})", flush=True)
        if self.test_evaluator is not None:  # pretraining runs have no segmentation test
            fields.update(self._test())
        record = run.write_record({**fields, **run.notes})
        run.checkpoint_path.unlink(missing_ok=True)
        logger.info("run finished: %s", run.record_path)
        self.record = record

    def _test(self) -> dict:
        """Best weights back into the network, the test split per case, and the fields run.json keeps."""
        run = self.run_directory
        module = self.network.module if hasattr(self.network, "module") else self.network
        if not run.model_path.exists():  # no validation ran: the last weights are the result
            save_torch(run.model_path, {k: v.detach().cpu() for k, v in module.state_dict().items()})
        load_weights(module, run.model_path)
        self.test_evaluator.run()
        summary = write_summary(run.summary_path, self.case_metrics.cases)
        mean = summary["mean"]
        logger.info("mean test Dice %.4f over %d cases", mean.get("dice") or float("nan"), summary["n_cases"])
        history = self.best_model.history if self.best_model is not None else []
        return {
            "metrics": {
                "mean_dice": mean.get("dice"),
                "mean_hd95": mean.get("hd95"),
                "mean_surface_dice": mean.get("surface_dice"),
                "n_test_cases": summary["n_cases"],
            },
            "per_case": summary["metric_per_case"],
            "best_epoch": self.best_model.best_epoch if self.best_model is not None else None,
            "best_val_dice": self.best_model.best_value if history else None,
            "val_history": [{"epoch": e, "val_dice": v} for e, v in history],
            "model_sha256": sha256_of(run.model_path),
        }
