"""Learns a run's post-processing on the validation split when training completes (nnU-Net's rule)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from ignite.engine import Engine, Events

from medtransfer.inference.postprocess import choose_postprocessing, description
from medtransfer.training.distributed import is_main_process
from medtransfer.training.run_directory import RunDirectory
from medtransfer.training.weights import load_weights

logger = logging.getLogger("medtransfer.handlers")


class LearnPostprocessing:
    """On trainer COMPLETED: predict the validation split with the best weights and choose the post-processing.

    The choice (with the validation Dice of every candidate) goes into ``run.json`` as ``postprocessing``; list
    this handler before RunRecord so that the record it writes includes it. ``segment`` and ``export`` read it
    from there. Predictions are compared in the evaluated (resampled) grid, with that grid's spacing.
    """

    def __init__(
        self,
        run_directory: RunDirectory,
        network: torch.nn.Module,
        data_loader,
        inferer,
        device: torch.device | str = "cpu",
        min_size: float | None = None,
    ) -> None:
        self.run_directory = run_directory
        self.network = network
        self.data_loader = data_loader
        self.inferer = inferer
        self.device = torch.device(device)
        self.min_size = min_size
        self.choice: dict | None = None

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.COMPLETED, self.learn)

    def learn(self, _trainer: Engine | None = None) -> dict | None:
        if not is_main_process():
            return None
        run = self.run_directory
        module = self.network.module if hasattr(self.network, "module") else self.network
        if run.model_path.exists():
            load_weights(module, run.model_path)
        predictions, labels, spacings = [], [], []
        module.eval()
        with torch.no_grad():
            for batch in self.data_loader:
                logits = self.inferer(batch["image"].to(self.device), module)
                for index in range(logits.shape[0]):
                    predictions.append(logits[index].argmax(0).cpu().numpy().astype(np.uint8))
                    labels.append((batch["label"][index, 0] > 0.5).cpu().numpy().astype(np.uint8))
                    pixdim = getattr(batch["image"][index], "pixdim", None)
                    spacings.append(None if pixdim is None else [float(s) for s in pixdim])
        if not predictions:
            logger.warning("no validation cases: no post-processing learned")
            return None
        self.choice = choose_postprocessing(predictions, labels, spacings, self.min_size)
        run.notes["postprocessing"] = self.choice
        print(f"medtransfer: post-processing learned on {len(predictions)} validation cases: "
              f"{description(self.choice)} (mean Dice {self.choice['validation_dice']})", flush=True)
        return self.choice
