"""The network a run fine-tunes in: medtransfer's DynUNet, or the source checkpoint's own MONAI architecture.

The bundle key ``source_network`` says which:

- ``null``: medtransfer's DynUNet (``filters``), as before;
- ``auto``: read from the source checkpoint's tensors (a MONAI UNet's channels, strides and residual units),
  refused when the tensors leave it ambiguous;
- a literal mapping ``{name: UNet, channels: [...], strides: [...], num_res_units: 2, ...}``, checked against
  an allow-list of MONAI classes and never evaluated;
- a path to a source MONAI bundle (folder or config file), whose ``network_def`` is read as data.

The class count is always the target's: the binary head replaces the source's head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import nn

from medtransfer.networks import DEFAULT_FILTERS, NetworkSpecError, architecture_from_bundle, build_network
from medtransfer.networks import check_architecture, recognise
from medtransfer.transfer.adapters import read_source_state


def resolve_source_network(
    source_network: str | Mapping | None, source_checkpoint: str | Path | None = None, trusted: bool = False
) -> dict | None:
    """The checked literal architecture `source_network` stands for (None: medtransfer's DynUNet)."""
    if source_network is None or source_network == "":
        return None
    if isinstance(source_network, Mapping):
        return check_architecture(dict(source_network))
    if source_network == "auto":
        if not source_checkpoint:
            raise NetworkSpecError("source_network: auto reads the architecture from --source_checkpoint; none given")
        state = read_source_state(source_checkpoint, trusted).state
        found = recognise(state)
        if found.arguments is None:
            reason = found.ambiguity or "medtransfer reads only MONAI UNet architectures from tensors"
            raise NetworkSpecError(
                f"{source_checkpoint}: source_network: auto cannot read the architecture of {found.summary()}: "
                f"{reason}. Give it as a mapping, e.g. source_network: {{name: UNet, channels: [...], "
                "strides: [...], num_res_units: N}"
            )
        return check_architecture(found.arguments, f"{source_checkpoint}: inferred architecture")
    if isinstance(source_network, str) and Path(source_network).exists():
        return architecture_from_bundle(source_network)
    raise NetworkSpecError(
        f"source_network {source_network!r}: expected null, 'auto', a mapping {{name: UNet, ...}} or the path of a "
        "source MONAI bundle (folder or config file)"
    )


def build_run_network(
    spatial_dims: int,
    filters: Sequence[int] = DEFAULT_FILTERS,
    init_seed: int | None = None,
    source_network: str | Mapping | None = None,
    source_checkpoint: str | Path | None = None,
    trusted_checkpoint: bool = False,
    in_channels: int = 1,
    out_channels: int = 2,
) -> nn.Module:
    """The bundle's ``network_def``: the network `source_network` names, with the run's seed and class count."""
    architecture = resolve_source_network(source_network, source_checkpoint, trusted_checkpoint)
    return build_network(spatial_dims, filters, init_seed, architecture, in_channels, out_channels)
