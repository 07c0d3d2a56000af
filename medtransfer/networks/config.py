"""A network from a run's recorded configuration (run.json `config`), and the input multiple it needs.

train.yaml's `network_def` builds the network from these same keys; everything that rebuilds a run's network
afterwards (inference, export, CKA) goes through `build_from_config`, so no reader guesses a default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from monai.networks.nets import BasicUNet, DynUNet, FlexibleUNet, SegResNet, SwinUNETR, UNet
from torch import nn

from medtransfer.networks.unets import build_dynunet, build_resnet_unet

RESNET_UNET_STRIDE = 32  # FlexibleUNet's ResNet encoder: a stem of stride 4, then three stride-2 stages


class NetworkConfigError(ValueError):
    """A recorded configuration does not say which network to build; the message names the missing key."""


def build_from_config(config: Mapping, in_channels: int = 1, out_channels: int = 2,
                      init_seed: int | None = None) -> nn.Module:
    """The network train.yaml built for `config`: a ResNet U-Net when it records a `backbone`, else a DynUNet
    with the recorded `filters` (never a default: a 2D and a 3D run record different filters)."""
    if "spatial_dims" not in config:
        raise NetworkConfigError("the run's configuration records no spatial_dims")
    dims = int(config["spatial_dims"])
    if config.get("backbone"):
        arguments = {"backbone": config["backbone"]}
        if config.get("decoder_channels"):
            arguments["decoder_channels"] = config["decoder_channels"]
        return build_resnet_unet(dims, in_channels=in_channels, out_channels=out_channels, init_seed=init_seed,
                                 **arguments)
    if not config.get("filters"):
        raise NetworkConfigError("the run's configuration records neither filters (DynUNet) nor a backbone")
    return build_dynunet(dims, in_channels=in_channels, out_channels=out_channels,
                         filters=[int(f) for f in config["filters"]], init_seed=init_seed)


def total_stride(network: nn.Module | Mapping | Sequence[int]) -> int:
    """How much the network downsamples: every input side must be a multiple of this.

    Accepts a network, a recorded configuration, or a DynUNet's filters (one level per entry, stride 2 below
    the first). A ResNet U-Net keeps its stride on the encoder (as segmentation_models_pytorch does).
    """
    network = getattr(network, "module", network)  # DDP / DataParallel
    if isinstance(network, (DynUNet, UNet)):  # both state their strides, an int or one per axis per level
        return _strides_product(network.strides)
    if isinstance(network, FlexibleUNet):
        return RESNET_UNET_STRIDE
    if isinstance(network, (BasicUNet, SegResNet, SwinUNETR)):
        return _monai_stride(network)
    if isinstance(network, Mapping):
        if network.get("backbone"):
            return RESNET_UNET_STRIDE
        if not network.get("filters"):
            raise NetworkConfigError("the configuration records neither filters (DynUNet) nor a backbone")
        return total_stride(list(network["filters"]))
    if isinstance(network, Sequence) and not isinstance(network, str):
        return 2 ** (len(network) - 1)
    raise TypeError(f"total_stride: cannot tell the stride of a {type(network).__name__}")


def _strides_product(strides) -> int:
    stride = 1
    for step in strides:
        stride *= int(step if isinstance(step, int) else max(step))
    return stride


def _monai_stride(network: nn.Module) -> int:
    """A source architecture's downsampling without stated strides: BasicUNet four pools, SegResNet a stride 2
    per down stage after the first, SwinUNETR its patch embedding (2) and four stride-2 merges."""
    if isinstance(network, BasicUNet):
        return 16
    if isinstance(network, SegResNet):
        return 2 ** (len(network.blocks_down) - 1)
    return 32  # SwinUNETR: MONAI requires every side divisible by 2**5


def network_input_channels(model: nn.Module) -> int | None:
    """Input channels of the first convolution of `model` (the network input), None without convolutions."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            return int(module.in_channels)
    return None
