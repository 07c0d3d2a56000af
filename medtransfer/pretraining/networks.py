"""Pretraining networks: a medtransfer U-Net plus the heads an objective needs.

Each wraps the *same* U-Net that fine-tuning uses (`.unet`), so that its encoder (and decoder) tensors keep
the names a transfer strategy expects; checkpoints are written from `.unet` alone.
"""

from __future__ import annotations

import torch
from torch import nn

from medtransfer.networks.encoding import bottleneck_channels, encoder_features
from medtransfer.pretraining.heads import AttentionPooling, ClassificationHead, ProjectionHead


class ClassificationNetwork(nn.Module):
    """Encoder → global pooling → MLP → class logits. Only the encoder is trained (the decoder never runs)."""

    trained_parts = ("encoder",)

    def __init__(self, unet: nn.Module, spatial_dims: int, num_classes: int) -> None:
        super().__init__()
        self.unet = unet
        self.classifier = ClassificationHead(bottleneck_channels(unet, spatial_dims), num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(encoder_features(self.unet, images)[-1])


class ReconstructionNetwork(nn.Module):
    """The whole U-Net restores a corrupted image (one output channel, sigmoid: images are in [0, 1])."""

    trained_parts = ("encoder", "decoder", "head")

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.unet(images))


class ConRecNetwork(nn.Module):
    """ConRec (Dippel et al.): U-Net reconstruction plus a contrastive embedding of the bottleneck.

    forward(x) → (reconstruction in [0, 1], z): z = 3-layer projection of the attention-weighted global pooling
    of the bottleneck. The bottleneck is captured with a forward hook so the U-Net runs once per view.
    """

    trained_parts = ("encoder", "decoder", "head")

    def __init__(self, unet: nn.Module, spatial_dims: int, projection_dim: int = 128) -> None:
        super().__init__()
        self.unet = unet
        channels = bottleneck_channels(unet, spatial_dims)
        self.pooling = AttentionPooling(channels, spatial_dims)
        self.projection = ProjectionHead(channels, projection_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured = {}
        hook = self.unet.bottleneck.register_forward_hook(lambda _m, _i, out: captured.__setitem__("out", out))
        try:
            reconstruction = torch.sigmoid(self.unet(images))
        finally:
            hook.remove()
        return reconstruction, self.projection(self.pooling(captured["out"]))
