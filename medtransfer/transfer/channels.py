"""Input-channel adaptation of a checkpoint's first convolution (grey ↔ colour, or another number of sequences).

The rule is timm's ``adapt_input_conv`` (used for its ``in_chans`` argument), chosen because it keeps the
network's response for an image whose channels are equal (a grey image shown as R = G = B):

* **to one channel** (colour source, grey target): the filters are **summed** over the source's channels;
* **to more channels** (grey source, colour target; or any other change): the filters are **repeated** over
  the new channels and **scaled** by ``have / want``.

Only the convolutions that read the network input are adapted: tensors whose shape differs from the
target's in the input-channel axis alone, and whose target takes the network's input channels. Every
adaptation is written into the checkpoint's notes, which the transfer report lists.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medtransfer.networks.config import network_input_channels

RULE_SUM = "summed over the input channels (timm adapt_input_conv)"
RULE_REPEAT = "repeated over the input channels and scaled by have/want (timm adapt_input_conv)"


def input_conv_weight(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """`weight` (out, in, *kernel) adapted to `channels` input channels by the rule above."""
    have = weight.shape[1]
    if channels == have:
        return weight
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(channels / have)
    return weight.repeat(1, repeats, *([1] * (weight.ndim - 2)))[:, :channels] * (have / channels)


def adapt_input_channels(state: dict[str, torch.Tensor], model: nn.Module, notes: list[str]) -> dict[str, torch.Tensor]:
    """`state` with its input convolutions fitted to `model`'s input channels; a note per adapted tensor."""
    channels = network_input_channels(model)
    target = dict(model.state_dict())
    adapted = dict(state)
    for name, tensor in state.items():
        goal = target.get(name)
        if goal is None or tensor.ndim not in (4, 5) or tensor.ndim != goal.ndim or tensor.shape == goal.shape:
            continue
        if tensor.shape[0] != goal.shape[0] or tensor.shape[2:] != goal.shape[2:] or goal.shape[1] != channels:
            continue
        adapted[name] = input_conv_weight(tensor, channels)
        rule = RULE_SUM if channels == 1 else RULE_REPEAT
        notes.append(f"{name}: input channels {tensor.shape[1]} -> {channels}, filters {rule}")
    return adapted
