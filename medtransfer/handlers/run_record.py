"""Finishes a run: test evaluation with the best weights, summary.json and the final run.json."""

from __future__ import annotations

import logging
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
    ) -> None:
        self.run_directory = run_directory
        self.network = network
        self.test_evaluator = test_evaluator
        self.case_metrics = case_metrics
        self.best_model = best_model
        self.checkpoint = checkpoint
        self.data = data or {}
        self.epoch_seconds: list[float] = []
        self._epoch_started = 0.0

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._end_epoch)
        trainer.add_event_handler(Events.COMPLETED, self.finish)

    def _start_epoch(self, _trainer: Engine) -> None:
        self._epoch_started = time.perf_counter()

    def _end_epoch(self, trainer: Engine) -> None:
        seconds = time.perf_counter() - self._epoch_started
        self.epoch_seconds.append(seconds)
        if is_main_process():  # one line per epoch: progress for people and for `medtransfer study`
            print(f"medtransfer: epoch {trainer.state.epoch}/{trainer.state.max_epochs} done ({seconds:.1f} s)",
                  flush=True)

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
        }
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
