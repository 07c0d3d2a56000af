"""The single place that knows how a network splits into encoder / decoder / head.

Transfer, freezing, CKA layer choice and reports all ask `parts(model)`; nothing else parses parameter
names. Names are those of `model.named_parameters()` and of the buffers (normalisation statistics), so
aliases such as DynUNet's `skip_layers.*` (the same modules registered a second time) never appear twice.
"""

from __future__ import annotations

import re

import torch
from monai.networks.nets import DynUNet, FlexibleUNet
from torch import nn

PART_NAMES = ("encoder", "decoder", "head")

# Top-level module name -> part, per family. Anchored on the first name component.
_DYNUNET_PARTS = {
    "input_block": "encoder",
    "downsamples": "encoder",
    "bottleneck": "encoder",
    "upsamples": "decoder",
    "output_block": "head",
    "deep_supervision_heads": "head",
}
_FLEXIBLE_UNET_PARTS = {"encoder": "encoder", "decoder": "decoder", "segmentation_head": "head"}


def _unwrap(model: nn.Module) -> nn.Module:
    """Look through DDP/DataParallel wrappers."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _part_table(model: nn.Module) -> dict[str, str]:
    model = _unwrap(model)
    if isinstance(model, DynUNet):
        return _DYNUNET_PARTS
    if isinstance(model, FlexibleUNet):
        return _FLEXIBLE_UNET_PARTS
    table = getattr(model, "part_table", None)  # networks of our own (pretraining wrappers) declare theirs
    if isinstance(table, dict):
        return table
    raise TypeError(
        f"{type(model).__name__} has no known encoder/decoder/head split; "
        "use a DynUNet or FlexibleUNet built by medtransfer.networks, or give the module a `part_table`"
    )


def _unique_tensor_names(model: nn.Module) -> list[str]:
    """Parameter and buffer names with aliases removed (named_* deduplicate shared modules)."""
    names = [name for name, _ in model.named_parameters(remove_duplicate=True)]
    names += [name for name, _ in model.named_buffers(remove_duplicate=True)]
    return names


def part_of(name: str, table: dict[str, str]) -> str | None:
    return table.get(name.split(".", 1)[0])


def parts(model: nn.Module, include_buffers: bool = True) -> dict[str, list[str]]:
    """{"encoder": [...], "decoder": [...], "head": [...]} of tensor names of `model`.

    With include_buffers (default) the normalisation running statistics are listed with their part, since a
    transfer must copy them too. Every tensor belongs to exactly one part; an unknown top-level module is an
    error rather than a silent omission.
    """
    model = _unwrap(model)
    table = _part_table(model)
    names = _unique_tensor_names(model) if include_buffers else [n for n, _ in model.named_parameters()]
    split: dict[str, list[str]] = {part: [] for part in PART_NAMES}
    for name in names:
        part = part_of(name, table)
        if part is None:
            raise ValueError(f"tensor {name!r} of {type(model).__name__} is in no part (known: {sorted(table)})")
        split[part].append(name)
    return split


def part_modules(model: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """Top-level child modules per part, e.g. for putting frozen normalisation layers in eval mode."""
    model = _unwrap(model)
    table = _part_table(model)
    grouped: dict[str, list[tuple[str, nn.Module]]] = {part: [] for part in PART_NAMES}
    for name, child in model.named_children():
        part = table.get(name)
        if part is not None:
            grouped[part].append((name, child))
    return grouped


def part_regex(model: nn.Module, part: str) -> str:
    """An anchored regex matching the state-dict keys of one part (for monai's copy_model_state/freeze_layers)."""
    table = _part_table(model)
    prefixes = sorted(name for name, p in table.items() if p == part)
    if not prefixes:
        raise ValueError(f"{type(_unwrap(model)).__name__} has no part {part!r}")
    return r"^(" + "|".join(re.escape(p) for p in prefixes) + r")\."


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Number of scalar parameters per part (used in reports and model cards)."""
    model = _unwrap(model)
    by_name = dict(model.named_parameters())
    return {
        part: int(sum(by_name[n].numel() for n in names if n in by_name))
        for part, names in parts(model, include_buffers=False).items()
    }


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Alias-free name -> tensor map of parameters and buffers, the basis for comparing transfers."""
    model = _unwrap(model)
    tensors = dict(model.named_parameters(remove_duplicate=True))
    tensors.update(dict(model.named_buffers(remove_duplicate=True)))
    return tensors


def dynunet_layout(state: dict[str, torch.Tensor]) -> dict | None:
    """spatial_dims, in/out channels and filters of the DynUNet whose tensors `state` holds (None if it holds
    no DynUNet input block), for a weights file that comes without the run.json that recorded them."""
    first = state.get("input_block.conv1.conv.weight")
    if first is None:
        return None
    downs = sorted({int(k.split(".")[1]) for k in state if k.startswith("downsamples.") and k.endswith("conv1.conv.weight")})
    filters = [int(first.shape[0])] + [int(state[f"downsamples.{i}.conv1.conv.weight"].shape[0]) for i in downs]
    filters.append(int(state["bottleneck.conv1.conv.weight"].shape[0]))
    head = state.get("output_block.conv.conv.weight")
    return {"spatial_dims": first.ndim - 2, "filters": filters, "in_channels": int(first.shape[1]),
            "out_channels": int(head.shape[0]) if head is not None else None}
