"""Run only the encoder of a U-Net and get its feature maps, shallow to deep (the bottleneck last).

Pretraining heads (classification, contrastive projection) sit on these features; the decoder is not run.
"""

from __future__ import annotations

import torch
from monai.networks.nets import DynUNet, FlexibleUNet
from torch import nn

from medtransfer.networks.config import network_input_channels


def encoder_features(unet: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Feature maps of every encoder level for a DynUNet or FlexibleUNet (the last one is the deepest)."""
    if isinstance(unet, DynUNet):
        features = [unet.input_block(images)]
        for block in unet.downsamples:
            features.append(block(features[-1]))
        features.append(unet.bottleneck(features[-1]))
        return features
    if isinstance(unet, FlexibleUNet):
        return [f for f in unet.encoder(images) if f is not None]
    raise TypeError(f"no encoder path known for {type(unet).__name__}")


def bottleneck_channels(unet: nn.Module, spatial_dims: int, size: int = 32) -> int:
    """Channels of the deepest feature map, found by a forward pass on a small zero input."""
    with torch.no_grad():
        probe = torch.zeros((1, network_input_channels(unet) or 1) + (size,) * spatial_dims)
        training = unet.training
        unet.eval()
        channels = encoder_features(unet, probe)[-1].shape[1]
        unet.train(training)
    return int(channels)
