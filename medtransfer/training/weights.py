"""Loading trained weights safely: `weights_only=True`, and errors that say what does not match."""

from __future__ import annotations

from medtransfer.errors import MedtransferError

from pathlib import Path

import torch
from torch import nn


class WeightsError(MedtransferError, ValueError):
    """A weights file cannot be loaded into a network; the message names the file and the mismatch."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict from `path` (also accepts MONAI's `{"model": state_dict}`); never unpickles code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or EOFError depending on the damage
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(
            f"{path}: not a loadable weights file (corrupted, or it holds pickled objects that "
            f"weights_only loading refuses): {first_line}"
        ) from None
    if isinstance(loaded, dict) and "model" in loaded and isinstance(loaded["model"], dict):
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors, got {type(loaded).__name__}")
    return loaded


def load_weights(network: nn.Module, path: str | Path) -> nn.Module:
    """Load a full state dict strictly, reporting missing/unexpected keys and shape mismatches by name."""
    state = read_state_dict(path)
    module = network.module if hasattr(network, "module") else network
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs network {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shapes:
            details.append(f"{len(shapes)} with other shapes (e.g. {shapes[:3]})")
        raise WeightsError(f"{path} does not fit {type(module).__name__}: " + "; ".join(details))
    module.load_state_dict(state)
    return network
