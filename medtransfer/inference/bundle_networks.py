"""Network code an exported bundle ships in ``scripts/networks.py``: what MONAI's own classes cannot express.

- ``ProbabilityEnsemble``: several members, one output: the log of their averaged softmax probabilities (log
  probabilities are logits, so argmax, ``AsDiscreted`` and a softmax downstream work unchanged).
- ``EnsembleSlidingWindowInferer``: runs each member by sliding windows on the whole image, then averages their
  softmax probabilities, exactly as ``medtransfer segment RUN_A RUN_B ...`` does (averaging per window instead
  would weigh overlapping windows differently and change voxels near a tie).
- ``ScriptableFlexibleUNet``: MONAI's FlexibleUNet whose ResNet "A" shortcuts (a ``functools.partial``, which
  TorchScript cannot compile) are small modules doing the same pooling and zero padding. Same tensors, same
  outputs, so ``torch.jit.script`` (and the Model Zoo's ``ckpt_export``) work.

This file is copied into bundles as it is: it imports torch and MONAI only, never medtransfer.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import FlexibleUNet
from torch import nn
from torch.nn import functional as F

# log(0) would make -inf logits; two softmax channels never both fall below this
_SMALLEST_PROBABILITY = 1e-30


class ProbabilityEnsemble(nn.Module):
    """``log(mean_i softmax(member_i(x)))``; ``members``: networks of one input and class layout."""

    def __init__(self, members: list) -> None:
        super().__init__()
        if not members:
            raise ValueError("ProbabilityEnsemble needs at least one member network")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: Optional[torch.Tensor] = None
        for member in self.members:
            probabilities = torch.softmax(member(x).float(), dim=1)
            total = probabilities if total is None else total + probabilities
        assert total is not None
        return torch.log((total / len(self.members)).clamp_min(1e-30))  # _SMALLEST_PROBABILITY (TorchScript: literal)


class EnsembleSlidingWindowInferer(SlidingWindowInferer):
    """Sliding windows per member of a ``ProbabilityEnsemble``, probabilities averaged over whole images.

    Returns log probabilities (logits) like ``ProbabilityEnsemble``; a network without members is run as
    ``SlidingWindowInferer`` runs it."""

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        members = getattr(network, "members", None)
        if members is None:
            return super().__call__(inputs, network, *args, **kwargs)
        total = None
        for member in members:
            probabilities = torch.softmax(torch.as_tensor(super().__call__(inputs, member, *args, **kwargs)).float(),
                                          dim=1)
            total = probabilities if total is None else total + probabilities
        return torch.log((total / len(members)).clamp_min(_SMALLEST_PROBABILITY))


class _ShortcutA(nn.Module):
    """ResNet's parameter-free "A" shortcut: 1-voxel average pooling with a stride, then zero channels."""

    def __init__(self, planes: int, stride: int, spatial_dims: int) -> None:
        super().__init__()
        self.planes, self.stride, self.spatial_dims = int(planes), int(stride), int(spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spatial_dims == 3:
            pooled = F.avg_pool3d(x, kernel_size=1, stride=self.stride)
        else:
            pooled = F.avg_pool2d(x, kernel_size=1, stride=self.stride)
        shape = list(pooled.shape)
        shape[1] = self.planes - shape[1]
        return torch.cat([pooled, torch.zeros(shape, dtype=pooled.dtype, device=pooled.device)], dim=1)


def replace_partial_shortcuts(network: nn.Module) -> nn.Module:
    """Swap every ResNet "A" shortcut (a ``functools.partial``) of ``network`` for a ``_ShortcutA``; in place."""
    for module in network.modules():
        shortcut = getattr(module, "downsample", None)
        if isinstance(shortcut, partial):
            keywords = shortcut.keywords
            module.downsample = _ShortcutA(keywords["planes"], keywords["stride"], keywords.get("spatial_dims", 3))
    return network


class ScriptableFlexibleUNet(FlexibleUNet):
    """``monai.networks.nets.FlexibleUNet`` (same arguments, same state dict) that ``torch.jit.script`` compiles."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        replace_partial_shortcuts(self)
