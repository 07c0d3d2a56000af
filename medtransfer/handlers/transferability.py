"""TransferabilityScore: scores the pretraining U-Net's encoder on target images at every scheduled checkpoint."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from ignite.engine import Engine, Events
from torch import nn

from medtransfer.networks.config import total_stride

logger = logging.getLogger("medtransfer.pretraining")


class TransferabilityScore:
    """At each scheduled checkpoint epoch (and at the end), scores the current encoder on a target manifest.

    Scores (:func:`medtransfer.analysis.checkpoint_scores.score_network`): Hidy et al.'s robustness score
    on the flattened deepest-skip map (``pool=False``, see that module; lower is better) and LogME when the
    target has labels (higher is better), on a fixed seeded sample of ``n_images`` target images centre
    padded/cropped to ``spatial_size``. The sample is loaded once, at the first scoring. Results go to
    ``run_directory.notes["transferability"]``, which ends up in run.json.

    ``manifest=None`` disables the handler (``attach`` does nothing), so overlays can always list it.

    Args:
        run_directory: the run's RunDirectory.
        network: the pretraining network or objective; its ``.unet`` is scored (or the module itself).
        manifest: target manifest name/path (or None).
        spatial_size: target image size; usually ``@patch_size``.
        checkpoint_epochs: the pretraining checkpoint schedule.
    """

    def __init__(
        self,
        run_directory,
        network,
        manifest: str | None,
        spatial_size: Sequence[int],
        checkpoint_epochs: Sequence[int] = (),
        data_root: str | None = None,
        split: str = "validation",
        n_images: int = 16,
        seed: int = 0,
        pool: bool = False,
    ) -> None:
        self.run_directory = run_directory
        self.network = network
        self.manifest = manifest
        self.spatial_size = list(spatial_size)
        self.schedule = sorted({int(e) for e in checkpoint_epochs})
        self.data_root = data_root
        self.split = split
        self.n_images = int(n_images)
        self.seed = int(seed)
        self.pool = bool(pool)
        self._batches = None
        self.results: list[dict] = []

    @property
    def enabled(self) -> bool:
        return bool(self.manifest)

    def attach(self, trainer: Engine) -> None:
        if not self.enabled:
            return
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._scheduled)
        trainer.add_event_handler(Events.COMPLETED, self._final)

    def _unet(self) -> nn.Module:
        unet = getattr(self.network, "unet", None)
        return unet if isinstance(unet, nn.Module) else self.network

    def score(self, epoch: int) -> dict:
        from medtransfer.analysis.checkpoint_scores import score_network, target_batches

        unet = self._unet()
        if self._batches is None:
            self._batches = target_batches(self.manifest, self.spatial_size, self.split, self.n_images, self.seed,
                                           data_root=self.data_root, divisor=total_stride(unet))
        started = time.perf_counter()
        scores = score_network(unet, self._batches, pool=self.pool, seed=self.seed)
        entry = {"epoch": int(epoch), **scores, "seconds": round(time.perf_counter() - started, 3)}
        self.results = [r for r in self.results if r["epoch"] != entry["epoch"]] + [entry]
        self.run_directory.notes["transferability"] = {
            "target": str(self.manifest),
            "split": self.split,
            "n_images": entry["n_images"],
            "pool": self.pool,
            "spatial_size": self.spatial_size,
            "seed": self.seed,
            "level": entry["level"],
            "score_direction": {"robustness": "lower is better", "logme": "higher is better"},
            "checkpoints": sorted(self.results, key=lambda r: r["epoch"]),
        }
        logger.info("transferability at epoch %d: robustness %.4f, LogME %s", epoch, scores["robustness"],
                    scores["logme"])
        return entry

    def _scheduled(self, trainer: Engine) -> None:
        epoch = int(trainer.state.epoch)
        if epoch in self.schedule:
            self.score(epoch)

    def _final(self, trainer: Engine) -> None:
        epoch = int(trainer.state.epoch)
        if not any(r["epoch"] == epoch for r in self.results):  # pretrained.pt = the last epoch
            self.score(epoch)
