"""U-Net builders sized for CPU training by default.

Two families: MONAI `DynUNet` (the nnU-Net topology; the default) and MONAI `FlexibleUNet` with a ResNet
encoder (so ImageNet/MedicalNet ResNets can be transferred through a key adapter). Both are plain MONAI
modules; `medtransfer.networks.parts` knows how to split them into encoder / decoder / head.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from monai.networks.nets import DynUNet, FlexibleUNet

DEFAULT_FILTERS = (16, 32, 64, 128)


@contextmanager
def _seeded(init_seed: int | None):
    """Draw the initial weights from `init_seed` without touching the global random state.

    A run's fresh initialisation then depends only on its seed, not on what the config happened to build
    first, so "the parts a strategy does not load equal a fresh initialisation" is a checkable statement.
    """
    if init_seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(init_seed))
        yield


def build_dynunet(
    spatial_dims: int,
    in_channels: int = 1,
    out_channels: int = 2,
    filters: Sequence[int] = DEFAULT_FILTERS,
    kernel_size: int = 3,
    norm_name: str | tuple = ("INSTANCE", {"affine": True}),
    deep_supervision: bool = False,
    dropout: float | None = None,
    init_seed: int | None = None,
) -> DynUNet:
    """nnU-Net-style U-Net: one level per entry of `filters`, full resolution first, stride 2 below.

    The input must be divisible by 2 ** (len(filters) - 1) in every spatial dimension.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if len(filters) < 2:
        raise ValueError(f"a U-Net needs at least 2 levels (filters), got {list(filters)}")
    levels = len(filters)
    with _seeded(init_seed):
        return DynUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=[kernel_size] * levels,
            strides=[1] + [2] * (levels - 1),
            upsample_kernel_size=[2] * (levels - 1),
            filters=list(filters),
            norm_name=norm_name,
            deep_supervision=deep_supervision,
            deep_supr_num=1,
            dropout=dropout,
            res_block=False,
        )


def build_resnet_unet(
    spatial_dims: int,
    in_channels: int = 1,
    out_channels: int = 2,
    backbone: str = "resnet18",
    decoder_channels: Sequence[int] = (128, 64, 32, 16, 8),
    init_seed: int | None = None,
) -> FlexibleUNet:
    """U-Net with a ResNet encoder (MONAI `FlexibleUNet`), never downloading weights at construction.

    Pretrained encoders come in through `medtransfer.transfer` adapters from a local file, so that a bundle
    works offline and loads nothing it was not given explicitly.
    """
    if not backbone.startswith("resnet"):
        raise ValueError(f"only ResNet backbones are supported by the ResNet-encoder U-Net, got {backbone!r}")
    with _seeded(init_seed):
        return FlexibleUNet(
            in_channels=in_channels,
            out_channels=out_channels,
            backbone=backbone,
            pretrained=False,
            decoder_channels=tuple(decoder_channels),
            spatial_dims=spatial_dims,
            is_pad=True,
        )
