"""Networks and their named parts (encoder / decoder / head)."""

from medtransfer.networks.config import NetworkConfigError, build_from_config, total_stride
from medtransfer.networks.parts import PART_NAMES, count_parameters, part_modules, part_regex, parts, state_tensors
from medtransfer.networks.unets import DEFAULT_FILTERS, build_dynunet, build_resnet_unet

__all__ = [
    "PART_NAMES",
    "DEFAULT_FILTERS",
    "NetworkConfigError",
    "build_from_config",
    "build_dynunet",
    "build_resnet_unet",
    "count_parameters",
    "part_modules",
    "part_regex",
    "parts",
    "state_tensors",
    "total_stride",
]
