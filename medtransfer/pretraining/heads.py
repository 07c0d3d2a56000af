"""Heads that pretraining puts on the shared U-Net encoder: attention pooling, projection, classification."""

from __future__ import annotations

import torch
from torch import nn


def _conv(spatial_dims: int):
    return nn.Conv3d if spatial_dims == 3 else nn.Conv2d


def _norm(spatial_dims: int):
    return nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d


class AttentionPooling(nn.Module):
    """Attention-weighted global average pooling (Dippel et al., ConRec).

    A small 1×1-conv tower (C/2, C/4, C/8 channels, then 1 with a sigmoid) predicts a mask `a`; the pooled
    vector is GAP(a ⊙ F) / GAP(a), so the embedding concentrates on the parts of the image the mask selects.
    """

    def __init__(self, channels: int, spatial_dims: int, dropout: float = 0.5) -> None:
        super().__init__()
        conv, norm = _conv(spatial_dims), _norm(spatial_dims)
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        width = channels
        for divisor in (2, 4, 8):
            out = max(1, channels // divisor)
            layers += [conv(width, out, 1), norm(out), nn.ReLU(inplace=True)]
            width = out
        layers += [conv(width, 1, 1), nn.Sigmoid()]
        self.mask = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        attention = self.mask(features)
        dims = tuple(range(2, features.ndim))
        return (attention * features).mean(dims) / attention.mean(dims).clamp_min(1e-6)


class ProjectionHead(nn.Module):
    """SimCLR projection: two hidden layers of the embedding's width (BN, ReLU), then 128-d with BN, no bias."""

    def __init__(self, channels: int, projection_dim: int = 128) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(channels, channels), nn.BatchNorm1d(channels), nn.ReLU(inplace=True),
            nn.Linear(channels, channels), nn.BatchNorm1d(channels), nn.ReLU(inplace=True),
            nn.Linear(channels, projection_dim, bias=False), nn.BatchNorm1d(projection_dim),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding)


class ClassificationHead(nn.Module):
    """Global average pooling + MLP: the in-house stand-in for ImageNet-style classification pretraining."""

    def __init__(self, channels: int, num_classes: int, hidden: int = 128, dropout: float = 0.2) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features.mean(tuple(range(2, features.ndim))))
