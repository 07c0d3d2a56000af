"""ApplyTransfer: loads and freezes the parts a strategy names before the first optimizer step."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from ignite.engine import Engine, Events
from torch import nn

from medtransfer.atomic import save_json, sha256_of
from medtransfer.training.distributed import is_main_process
from medtransfer.transfer.adapters import load_checkpoint
from medtransfer.transfer.freezing import FrozenParts
from medtransfer.transfer.strategies import TransferError, copy_parts, get_strategy

logger = logging.getLogger("medtransfer.transfer")


class ApplyTransfer:
    """Applies a transfer strategy once, builds the optimizer's parameter groups, and unfreezes on schedule.

    `apply()` runs when the optimizer asks for `param_groups()` (the bundle resolves the optimizer right before
    training) and again, as a no-op, at the trainer's STARTED event. A resumed run (its RunDirectory says so)
    does not load the checkpoint again — its own weights come from the resume checkpoint — but freezes the same
    parts, so the optimizer's groups and the frozen statistics are the same as before the interruption.
    """

    def __init__(
        self,
        network: nn.Module,
        strategy: str = "scratch",
        source_checkpoint: str | None = None,
        checkpoint_format: str = "auto",
        run_directory=None,
        unfreeze_epoch: int | None = None,
        transferred_lr_scale: float = 1.0,
        trusted_checkpoint: bool = False,
    ) -> None:
        self.network = network
        self.strategy = get_strategy(strategy)
        self.source_checkpoint = str(source_checkpoint) if source_checkpoint else None
        self.checkpoint_format = checkpoint_format
        self.run_directory = run_directory
        self.unfreeze_epoch = int(unfreeze_epoch) if unfreeze_epoch else None
        self.transferred_lr_scale = float(transferred_lr_scale)
        self.trusted_checkpoint = bool(trusted_checkpoint)  # a TorchScript source may be loaded (runs its code)
        if self.strategy.needs_checkpoint and not self.source_checkpoint:
            raise TransferError(
                f"strategy {self.strategy.name!r} loads the {' and '.join(self.strategy.load)} from a checkpoint: "
                "pass --source_checkpoint PATH"
            )
        self.frozen = FrozenParts(network, self.strategy.freeze)
        self.report: dict | None = None

    # Applying ------------------------------------------------------------------------------------------
    @property
    def resumed(self) -> bool:
        return bool(self.run_directory is not None and getattr(self.run_directory, "resumed", False))

    def apply(self) -> dict:
        if self.report is not None:
            return self.report
        if self.resumed and self._report_path().is_file():
            # the original report says which tensors were transferred: same frozen parts, same optimizer groups
            self.frozen.freeze()
            self.report = {**json.loads(self._report_path().read_text()), "resumed": True}
            self._record()
            return self.report
        tensors: dict[str, dict] = {}
        source: dict = {}
        if self.strategy.needs_checkpoint and not self.resumed:
            checkpoint = load_checkpoint(
                self.source_checkpoint, self.network, self.checkpoint_format, trusted=self.trusted_checkpoint
            )
            tensors = copy_parts(self.network, checkpoint.state, self.strategy, self.source_checkpoint)
            source = {
                "source_checkpoint": str(Path(self.source_checkpoint).resolve()),
                "checkpoint_format": checkpoint.format,
                "checkpoint_sha256": sha256_of(self.source_checkpoint),
                "checkpoint_meta": checkpoint.meta,
                "checkpoint_container": checkpoint.container,
                "checkpoint_prefixes_removed": checkpoint.prefixes_removed,
                "head_replaced": checkpoint.head_replaced,
                "network": type(self.network).__name__,
                "adapter_notes": checkpoint.notes,
            }
        elif self.source_checkpoint and not self.strategy.needs_checkpoint:
            logger.warning("strategy %r loads nothing: --source_checkpoint %s is ignored",
                           self.strategy.name, self.source_checkpoint)
        self.frozen.freeze()
        self.report = self._build_report(tensors, source)
        self._record()
        return self.report

    def _build_report(self, tensors: dict[str, dict], source: dict) -> dict:
        from medtransfer.networks.parts import parts

        frozen = set(self.frozen.parameter_names)
        if not tensors:  # nothing loaded (scratch, random_encoder_frozen, or a resumed run)
            tensors = {
                name: {"part": part, "action": "kept", "reason": "resumed run" if self.resumed else "not loaded"}
                for part, names in parts(self.network).items()
                for name in names
            }
        for name, entry in tensors.items():
            entry["frozen"] = name in frozen
        counts: dict[str, Counter] = {}
        for entry in tensors.values():
            counts.setdefault(entry["part"], Counter())[entry["action"]] += 1
            counts[entry["part"]]["frozen"] += int(entry["frozen"])
        reinitialised_head = any(e["part"] == "head" and e["action"] == "reinitialised" for e in tensors.values())
        return {
            "strategy": self.strategy.name,
            "loaded_parts": list(self.strategy.load),
            "frozen_parts": list(self.strategy.freeze),
            "unfreeze_epoch": self.unfreeze_epoch,
            "transferred_lr_scale": self.transferred_lr_scale,
            "resumed": self.resumed,
            **source,
            "head_reinitialised": reinitialised_head,
            "counts": {part: dict(counter) for part, counter in counts.items()},
            "tensors": tensors,
        }

    def _report_path(self) -> Path:
        return Path(self.run_directory.path) / "transfer.json"

    def _record(self) -> None:
        if self.run_directory is None or not is_main_process():
            return
        if not self.resumed:
            save_json(self._report_path(), self.report)
        summary = {k: v for k, v in self.report.items() if k not in ("tensors", "checkpoint_meta")}
        self.run_directory.notes["transfer"] = summary
        if self.report["head_reinitialised"]:
            logger.info("transfer: the head's shapes differ from the checkpoint; the head was re-initialised")

    # Optimizer -----------------------------------------------------------------------------------------
    def applied_network(self) -> nn.Module:
        """The network after the transfer: what DistributedDataParallel must wrap (it reads requires_grad once)."""
        self.apply()
        return self.network

    def param_groups(self, learning_rate: float) -> list[dict]:
        """Trainable parameters, transferred ones in their own group at `transferred_lr_scale` × lr.

        Frozen parameters are left out, unless they will be unfrozen later (`unfreeze_epoch`): then they are in
        their group from the start (no gradient reaches them until then), so the optimizer's and scheduler's
        structure never changes and a resumed run restores them exactly.
        """
        self.apply()
        loaded = {n for n, e in self.report["tensors"].items() if e["action"] == "loaded"}
        groups: dict[str, list] = {"transferred": [], "other": []}
        for name, parameter in self.network.named_parameters():
            if not parameter.requires_grad and self.unfreeze_epoch is None:
                continue
            groups["transferred" if name in loaded else "other"].append(parameter)
        result = [{"params": groups["other"], "lr": learning_rate, "name": "other"}]
        if groups["transferred"]:
            result.append(
                {"params": groups["transferred"], "lr": learning_rate * self.transferred_lr_scale, "name": "transferred"}
            )
        return [g for g in result if g["params"]]

    # Handler -------------------------------------------------------------------------------------------
    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.STARTED, lambda _engine: self.apply())
        if self.unfreeze_epoch is not None:
            trainer.add_event_handler(Events.EPOCH_STARTED, self._maybe_unfreeze)

    def _maybe_unfreeze(self, trainer: Engine) -> None:
        if trainer.state.epoch > self.unfreeze_epoch and self.frozen.active:
            self.frozen.unfreeze()
            logger.info("epoch %d: unfroze %s", trainer.state.epoch, ", ".join(self.strategy.freeze))
