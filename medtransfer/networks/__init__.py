"""Networks and their named parts (encoder / decoder / head)."""

from medtransfer.networks.config import NetworkConfigError, build_from_config, total_stride
from medtransfer.networks.builder import (
    ALLOWED_NETWORKS,
    NetworkSpecError,
    architecture_from_bundle,
    build_network,
    check_architecture,
)
from medtransfer.networks.parts import (
    PART_NAMES,
    Architecture,
    count_parameters,
    describe_network,
    part_modules,
    part_regex,
    parts,
    recognise,
    state_tensors,
)
from medtransfer.networks.unets import DEFAULT_FILTERS, build_dynunet, build_resnet_unet

__all__ = [
    "ALLOWED_NETWORKS",
    "PART_NAMES",
    "DEFAULT_FILTERS",
    "NetworkConfigError",
    "build_from_config",
    "Architecture",
    "NetworkSpecError",
    "architecture_from_bundle",
    "build_dynunet",
    "build_network",
    "build_resnet_unet",
    "check_architecture",
    "count_parameters",
    "describe_network",
    "part_modules",
    "part_regex",
    "parts",
    "recognise",
    "state_tensors",
    "total_stride",
]
