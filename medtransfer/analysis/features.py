"""Layer outputs of segmentation U-Nets, addressed by level name.

A *level* is one stage of the U-Net that yields a feature map. Levels are derived from
:func:`medtransfer.networks.parts.part_modules` — the top-level modules of the encoder, decoder and head —
so every family that `parts` knows (DynUNet, FlexibleUNet, modules with a ``part_table``) has levels. A
top-level module is one level unless it is a container of stages, which is expanded:

* a ``ModuleList`` into its items (DynUNet ``downsamples.i``, ``upsamples.i``);
* MONAI's ``ResNetEncoder`` into the five maps it returns: the stem activation ``act`` and ``layer1``–``layer4``;
* MONAI's ``UNetDecoder`` into its ``blocks.i``.

Levels are listed in forward order. For the supported families this is the order in which the modules
are registered, which is also the convention for a module with a ``part_table``. (DynUNet runs
``upsamples.0`` first, the deepest decoder stage; its skip connections pair ``input_block`` with the last
``upsamples``.)

Examples, for ``build_dynunet(2)`` (filters 16, 32, 64, 128)::

    layer_names(model, "encoder")  # ['input_block', 'downsamples.0', 'downsamples.1', 'bottleneck']
    layer_names(model, "decoder")  # ['upsamples.0', 'upsamples.1', 'upsamples.2']
    encoder_levels(model)          # ['input_block', 'downsamples.0', 'downsamples.1']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets.flexible_unet import UNetDecoder
from monai.networks.nets.resnet import ResNetEncoder
from torch import nn

from medtransfer.networks.parts import PART_NAMES, _unwrap, part_modules

LAYER_GROUPS = ("encoder", "decoder", "all")

# The feature maps MONAI's ResNetEncoder.forward returns, in order (the last one is the bottleneck).
_RESNET_ENCODER_LEVELS = ("act", "layer1", "layer2", "layer3", "layer4")


def layer_names(model: nn.Module, which: str = "all") -> list[str]:
    """Names of the U-Net's levels, in forward order, relative to the (unwrapped) model.

    Args:
        model: a network `medtransfer.networks.parts` can split (DDP/DataParallel wrappers are looked
            through).
        which: ``"encoder"`` (down to and including the bottleneck), ``"decoder"``, or ``"all"`` (encoder,
            decoder, then the head, e.g. DynUNet's ``output_block``).

    Returns:
        Module names, usable with :class:`FeatureRecorder` and ``model.get_submodule``.

    Raises:
        ValueError: for an unknown ``which``.
        TypeError: if the model has no known encoder/decoder/head split.
    """
    if which not in LAYER_GROUPS:
        raise ValueError(f"unknown layer group {which!r}; expected one of {LAYER_GROUPS}")
    grouped = part_modules(model)
    selected = PART_NAMES if which == "all" else (which,)
    return [level for part in selected for name, module in grouped[part] for level in _levels(name, module)]


def encoder_levels(model: nn.Module) -> list[str]:
    """The encoder levels that feed skip connections, shallow to deep.

    These are all encoder levels but the last one, the bottleneck, whose output enters the decoder
    directly. The *deepest skip level* — the default level of the transferability scores, Hidy et al.'s
    ``level = -2`` — is ``encoder_levels(model)[-1]``.

    Raises:
        ValueError: if the encoder has fewer than two levels (no skip level before a bottleneck).
    """
    levels = layer_names(model, "encoder")
    if len(levels) < 2:
        raise ValueError(f"{type(_unwrap(model)).__name__} has no skip level before its bottleneck: {levels}")
    return levels[:-1]


def _levels(name: str, module: nn.Module) -> list[str]:
    """One top-level module's levels: itself, or its stages for the containers listed in the module doc."""
    if isinstance(module, nn.ModuleList):
        return [f"{name}.{i}" for i in range(len(module))]
    if isinstance(module, ResNetEncoder):
        return [f"{name}.{child}" for child in _RESNET_ENCODER_LEVELS]
    if isinstance(module, UNetDecoder):
        return _levels(f"{name}.blocks", module.blocks)
    return [name]


class FeatureRecorder:
    """Records the outputs of named modules during forward passes, through forward hooks.

    Use as a context manager: hooks are registered on entry and removed on exit, even on error.
    ``features[name]`` is the detached output of the module's most recent call (not a copy: it shares
    memory with the forward's tensor).

    Example::

        with FeatureRecorder(model, ["downsamples.1"]) as recorder:
            model(images)
        maps = recorder.features["downsamples.1"]  # (B, C, *spatial)

    Args:
        model: the network (wrappers are looked through; names are relative to the wrapped module).
        names: module names, e.g. from :func:`layer_names`; default all levels (``layer_names(model)``).

    Raises:
        ValueError: if a name is not a submodule of the model.
    """

    def __init__(self, model: nn.Module, names: Sequence[str] | None = None) -> None:
        self.model = _unwrap(model)
        self.names = list(dict.fromkeys(layer_names(model) if names is None else names))
        self.modules = {name: _submodule(self.model, name) for name in self.names}
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> FeatureRecorder:
        self.features.clear()
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in self.modules.items()]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, name: str):
        def record(module: nn.Module, args: tuple, output: object) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"module {name!r} returned {type(output).__name__}, not a tensor; record a level")
            self.features[name] = output.detach()

        return record


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as error:
        raise ValueError(
            f"{type(model).__name__} has no module {name!r}; its levels are {layer_names(model)}"
        ) from error


def interpolate_at(feature_map: torch.Tensor, points: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Feature vectors of a map resized to ``size``, at integer positions, without building the resized map.

    Equal to ``F.interpolate(feature_map[None], size, mode="bilinear" | "trilinear",
    align_corners=False)[0][(slice(None), *points.T)].T``: pixel ``i`` of an axis of length ``L`` has its
    centre at ``(i + ½)·S/L − ½`` in the feature map's axis of length ``S``, interpolated (bi/tri)linearly,
    clamped to the border. It is computed with ``grid_sample`` at the normalised centres ``(2i + 1)/L − 1``,
    so a few hundred label pixels of a 3D volume cost a few hundred interpolations.

    Args:
        feature_map: ``(C, *spatial)`` features of one image, 2 or 3 spatial axes.
        points: ``(n, ndim)`` integer positions in a grid of shape ``size`` (e.g. label voxels).
        size: the grid's shape, e.g. the label's spatial shape.

    Returns:
        ``(n, C)`` tensor in the feature map's dtype and device.
    """
    ndim = len(size)
    if feature_map.ndim != ndim + 1 or points.ndim != 2 or points.shape[1] != ndim:
        raise ValueError(
            f"expected a (C, *spatial) map and (n, {ndim}) points for size {tuple(size)}, "
            f"got {tuple(feature_map.shape)} and {tuple(points.shape)}"
        )
    lengths = torch.tensor(list(size), dtype=feature_map.dtype, device=feature_map.device)
    centres = (2 * points.to(device=feature_map.device, dtype=feature_map.dtype) + 1) / lengths - 1
    grid = centres.flip(-1).reshape(1, *([1] * (ndim - 1)), -1, ndim)  # grid_sample wants (x, y[, z]) = reversed axes
    sampled = F.grid_sample(feature_map[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled.reshape(feature_map.shape[0], -1).T
