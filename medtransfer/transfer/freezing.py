"""Freezing parts of a network: no gradients, and normalisation statistics that do not move.

`requires_grad=False` alone is not freezing: BatchNorm (and InstanceNorm with running statistics) keeps
updating its running mean/variance in train mode, and the engine calls `network.train()` every iteration.
A forward pre-hook puts each normalisation layer of a frozen part back in eval mode right before it runs.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from medtransfer.networks.parts import part_modules, parts


def _keep_in_eval(module: nn.Module, _inputs) -> None:
    module.eval()


class FrozenParts:
    """Freeze (and later unfreeze) named parts of a network built by medtransfer.networks."""

    def __init__(self, network: nn.Module, frozen_parts: tuple[str, ...]) -> None:
        self.network = network
        self.frozen_parts = tuple(frozen_parts)
        split = parts(network, include_buffers=False)
        self.parameter_names = [name for part in self.frozen_parts for name in split[part]]
        self._hooks: list = []

    @property
    def active(self) -> bool:
        return bool(self._hooks) or any(
            not p.requires_grad for n, p in self.network.named_parameters() if n in set(self.parameter_names)
        )

    def freeze(self) -> None:
        wanted = set(self.parameter_names)
        for name, parameter in self.network.named_parameters():
            if name in wanted:
                parameter.requires_grad_(False)
        if not self._hooks:
            for part in self.frozen_parts:
                for _, child in part_modules(self.network)[part]:
                    for module in child.modules():
                        if isinstance(module, _NormBase):
                            module.eval()
                            self._hooks.append(module.register_forward_pre_hook(_keep_in_eval))

    def unfreeze(self) -> None:
        wanted = set(self.parameter_names)
        for name, parameter in self.network.named_parameters():
            if name in wanted:
                parameter.requires_grad_(True)
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
