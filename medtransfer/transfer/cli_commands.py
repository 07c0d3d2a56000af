"""`medtransfer inspect CHECKPOINT`: what a weights file is and what each target network could take from it.

Printing only; reading, recognising and adapting are `medtransfer.transfer.adapters` and
`medtransfer.networks.parts`.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path


def register(commands) -> None:
    inspect = commands.add_parser(
        "inspect", help="what a checkpoint file is: format, container, architecture, and which parts fit"
    )
    inspect.add_argument("checkpoint", help="a weights file (state dict, training checkpoint or TorchScript archive)")
    inspect.add_argument("--trusted", action="store_true",
                         help="allow a TorchScript archive (loading it runs its code)")
    inspect.set_defaults(handler=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    from medtransfer.transfer.adapters import CheckpointError

    try:
        for line in inspect_lines(Path(args.checkpoint), args.trusted):
            print(line)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def file_format(path: Path) -> str:
    from medtransfer.transfer.adapters import is_torchscript

    if is_torchscript(path):
        return "TorchScript archive (torch.jit.save: code and weights)"
    if zipfile.is_zipfile(path):
        return "PyTorch zip checkpoint (torch.save)"
    return "legacy PyTorch pickle (torch.save, _use_new_zipfile_serialization=False)"


def inspect_lines(path: Path, trusted: bool = False) -> list[str]:
    """The report, line by line. Raises CheckpointError for a file that cannot be read (or untrusted TorchScript)."""
    from medtransfer.atomic import sha256_of
    from medtransfer.networks import recognise
    from medtransfer.transfer.adapters import WRAPPER_PREFIXES, CheckpointError, read_source_state

    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    lines = [f"file: {path} ({path.stat().st_size:,} bytes, sha256 {sha256_of(path)})", f"format: {file_format(path)}"]
    unwrapped = read_source_state(path, trusted)
    state = unwrapped.state
    if unwrapped.container:
        ignored = f" (other entries ignored: {', '.join(unwrapped.ignored)})" if unwrapped.ignored else ""
        lines.append(f"container: {unwrapped.container!r}{ignored}")
    else:
        lines.append("container: none (a plain state dict)")
    lines.append("prefix removed: " + (", ".join(f"{p!r} ({WRAPPER_PREFIXES[p]})" for p in unwrapped.prefixes) or "none"))
    found = recognise(state)
    lines.append(f"architecture: {found.summary()}")
    if found.arguments:
        lines.append(f"  source_network: auto reads {found.arguments}")
    elif found.ambiguity:
        lines.append(f"  source_network: auto refuses: {found.ambiguity}")
    lines += [f"  note: {note}" for note in found.notes]
    buffers = [n for n in state if n.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")]
    values = sum(t.numel() for t in state.values())
    buffer_values = sum(state[n].numel() for n in buffers)
    lines.append(f"tensors: {len(state)} ({values:,} values): {len(state) - len(buffers)} parameters "
                 f"({values - buffer_values:,} values), {len(buffers)} normalisation statistics")
    dims = f"{found.spatial_dims}D" if found.spatial_dims else "unknown (no convolution weights of one rank)"
    inputs = found.in_channels if found.in_channels is not None else "unknown (no image-reading first convolution)"
    lines.append(f"dimensionality: {dims}; input channels: {inputs}")
    lines.append("what each target could take:")
    for name, model in _targets(found, path, trusted):
        lines.append(f"  {name}: {_fits(path, model, trusted)}")
    return lines


def _targets(found, path: Path, trusted: bool):
    from medtransfer.networks import DEFAULT_FILTERS, build_dynunet, build_resnet_unet, build_network
    from medtransfer.networks.builder import NetworkSpecError

    dims = found.spatial_dims or 2
    in_channels = found.in_channels or 1
    yield (f"DynUNet (medtransfer default, {dims}D, filters {list(DEFAULT_FILTERS)})",
           build_dynunet(dims, in_channels=in_channels))
    yield f"ResNet U-Net (FlexibleUNet resnet18, {dims}D)", build_resnet_unet(dims, in_channels=in_channels)
    if found.arguments:
        try:
            yield (f"its own architecture ({found.arguments['name']}, source_network: auto)",
                   build_network(dims, architecture=found.arguments, in_channels=in_channels))
        except (NetworkSpecError, ValueError, TypeError) as error:  # a MONAI constructor refusing the arguments
            yield f"its own architecture: cannot be built ({error})", None


def _fits(path: Path, model, trusted: bool) -> str:
    from medtransfer.transfer.adapters import CheckpointError, load_checkpoint

    if model is None:
        return "-"
    try:
        adapted = load_checkpoint(path, model, trusted=trusted)
    except CheckpointError as error:
        reason = str(error).removeprefix(f"{path}: ").split(". ")[0]
        return f"nothing ({reason})"
    parts = ", ".join(adapted.available_parts) or "nothing"
    head = "; head replaced (another class count)" if adapted.head_replaced else ""
    return f"{parts} (format {adapted.format}){head}"
