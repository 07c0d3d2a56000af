"""Transfer strategies: which parts of a U-Net to load from a checkpoint, and which to freeze.

| strategy               | loads                    | frozen    |
|------------------------|--------------------------|-----------|
| scratch                | nothing                  | nothing   |
| encoder                | encoder                  | nothing   |
| decoder                | decoder                  | nothing   |
| full                   | encoder, decoder, head*  | nothing   |
| encoder_frozen         | encoder                  | encoder   |
| random_encoder_frozen  | nothing                  | encoder   |

* the head is loaded when its shapes match and re-initialised otherwise (e.g. another number of classes).
Every part that is not loaded keeps the fresh initialisation drawn with the run's seed. All part names come
from `medtransfer.networks.parts`.
"""

from __future__ import annotations

from medtransfer.errors import MedtransferError

from dataclasses import dataclass

import torch
from torch import nn

from medtransfer.networks.parts import parts, state_tensors


class TransferError(MedtransferError, ValueError):
    """A strategy cannot be applied as asked; the message says which strategy, checkpoint and tensors."""


@dataclass(frozen=True)
class Strategy:
    name: str
    load: tuple[str, ...]
    freeze: tuple[str, ...]
    optional_load: tuple[str, ...] = ()  # loaded when shapes match, re-initialised otherwise

    @property
    def needs_checkpoint(self) -> bool:
        return bool(self.load)


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("scratch", load=(), freeze=()),
        Strategy("encoder", load=("encoder",), freeze=()),
        Strategy("decoder", load=("decoder",), freeze=()),
        Strategy("full", load=("encoder", "decoder"), freeze=(), optional_load=("head",)),
        Strategy("encoder_frozen", load=("encoder",), freeze=("encoder",)),
        Strategy("random_encoder_frozen", load=(), freeze=("encoder",)),
    )
}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise TransferError(f"unknown transfer strategy {name!r}; one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def copy_parts(
    model: nn.Module, state: dict[str, torch.Tensor], strategy: Strategy, source: str
) -> dict[str, dict[str, str]]:
    """Copy the strategy's parts from `state` into `model` in place; per tensor, what happened and why.

    Returns {tensor name: {"part", "action", "reason"}} for every tensor of the model, actions being
    loaded / skipped / reinitialised / kept (fresh initialisation, not asked for).
    """
    tensors = state_tensors(model)
    split = parts(model)
    report: dict[str, dict[str, str]] = {}
    for part, names in split.items():
        wanted = part in strategy.load or part in strategy.optional_load
        for name in names:
            entry = {"part": part, "action": "kept", "reason": "not part of the strategy"}
            if wanted:
                entry = _copy_one(tensors[name], state.get(name), part in strategy.optional_load)
                entry["part"] = part
            report[name] = entry
    for part in strategy.load:
        if not any(e["action"] == "loaded" for e in report.values() if e["part"] == part):
            expected = split[part][:4]
            raise TransferError(
                f"strategy {strategy.name!r} would load nothing of the {part} from {source}: none of its tensors "
                f"has a matching name and shape (expected keys such as {expected}); "
                f"the checkpoint provides {len(state)} tensors, e.g. {sorted(state)[:4]}"
            )
    return report


def _copy_one(target: torch.Tensor, source: torch.Tensor | None, optional: bool) -> dict[str, str]:
    if source is None:
        action = "reinitialised" if optional else "skipped"
        return {"action": action, "reason": "missing in checkpoint"}
    if tuple(source.shape) != tuple(target.shape):
        action = "reinitialised" if optional else "skipped"
        return {"action": action, "reason": f"shape {tuple(source.shape)} in checkpoint vs {tuple(target.shape)}"}
    with torch.no_grad():
        target.copy_(source.to(dtype=target.dtype, device=target.device))
    return {"action": "loaded", "reason": ""}
