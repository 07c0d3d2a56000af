"""The single place that knows how a network splits into encoder / decoder / head.

Transfer, freezing, CKA layer choice and reports all ask `parts(model)`; nothing else parses parameter
names. Names are those of `model.named_parameters()` and of the buffers (normalisation statistics), so
aliases such as DynUNet's `skip_layers.*` (the same modules registered a second time) never appear twice.

Families: DynUNet, FlexibleUNet (ResNet encoder), BasicUNet, SegResNet and SwinUNETR split by their top-level
modules; MONAI's `UNet` nests its levels (`model.1.submodule.1.submodule...`), so it splits by depth: the
first block of each level and the bottom are the encoder, the up block of each level the decoder, and the
topmost up block, which produces the classes, the head. `recognise(state)` reads which of these families (and
a few non-U-Net ones) a state dict comes from, and with what widths, from the same names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from monai.networks.nets import BasicUNet, DynUNet, FlexibleUNet, SegResNet, SwinUNETR, UNet
from torch import nn

PART_NAMES = ("encoder", "decoder", "head")

# Top-level module name -> part, per family. Anchored on the first name component.
_DYNUNET_PARTS = {
    "input_block": "encoder",
    "downsamples": "encoder",
    "bottleneck": "encoder",
    "upsamples": "decoder",
    "output_block": "head",
    "deep_supervision_heads": "head",
}
_FLEXIBLE_UNET_PARTS = {"encoder": "encoder", "decoder": "decoder", "segmentation_head": "head"}
_BASIC_UNET_PARTS = {
    **{name: "encoder" for name in ("conv_0", "down_1", "down_2", "down_3", "down_4")},
    **{name: "decoder" for name in ("upcat_4", "upcat_3", "upcat_2", "upcat_1")},
    "final_conv": "head",
}
_SEGRESNET_PARTS = {
    "convInit": "encoder", "down_layers": "encoder", "up_layers": "decoder", "up_samples": "decoder",
    "conv_final": "head",
}
_SWIN_UNETR_PARTS = {
    **{name: "encoder" for name in ("swinViT", "encoder1", "encoder2", "encoder3", "encoder4", "encoder10")},
    **{name: "decoder" for name in ("decoder5", "decoder4", "decoder3", "decoder2", "decoder1")},
    "out": "head",
}
_TABLES = {
    DynUNet: _DYNUNET_PARTS, FlexibleUNet: _FLEXIBLE_UNET_PARTS, BasicUNet: _BASIC_UNET_PARTS,
    SegResNet: _SEGRESNET_PARTS, SwinUNETR: _SWIN_UNETR_PARTS,
}


def _unwrap(model: nn.Module) -> nn.Module:
    """Look through DDP/DataParallel wrappers."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _part_table(model: nn.Module) -> dict[str, str]:
    """Top-level module -> part, for the families that split by top-level module (not MONAI's nested UNet)."""
    model = _unwrap(model)
    for family, table in _TABLES.items():
        if isinstance(model, family):
            return table
    table = getattr(model, "part_table", None)  # networks of our own (pretraining wrappers) declare theirs
    if isinstance(table, dict):
        return table
    if isinstance(model, UNet):
        raise TypeError("MONAI UNet nests its levels: it has no top-level part table; use parts(model)")
    raise TypeError(
        f"{type(model).__name__} has no known encoder/decoder/head split; use a DynUNet, FlexibleUNet, UNet, "
        "BasicUNet, SegResNet or SwinUNETR (medtransfer.networks builds them), or give the module a `part_table`"
    )


def monai_unet_part(name: str) -> str | None:
    """The part of a MONAI UNet tensor name, from its nesting depth; None for a name that is not UNet's."""
    if not name.startswith("model."):
        return None
    rest, depth = name.removeprefix("model."), 0
    while True:
        index, _, rest = rest.partition(".")
        if index == "0":
            return "encoder"
        if index == "2":
            return "head" if depth == 0 else "decoder"
        if index != "1" or not rest.startswith("submodule."):
            return None
        rest, depth = rest.removeprefix("submodule."), depth + 1
        if not rest.split(".", 1)[0].isdigit():  # the innermost SkipConnection holds the bottom block itself
            return "encoder"


def _classifier(model: nn.Module) -> Callable[[str], str | None]:
    model = _unwrap(model)
    if isinstance(model, UNet):
        return monai_unet_part
    table = _part_table(model)
    return lambda name: part_of(name, table)


def _unique_tensor_names(model: nn.Module) -> list[str]:
    """Parameter and buffer names with aliases removed (named_* deduplicate shared modules)."""
    names = [name for name, _ in model.named_parameters(remove_duplicate=True)]
    names += [name for name, _ in model.named_buffers(remove_duplicate=True)]
    return names


def part_of(name: str, table: dict[str, str]) -> str | None:
    return table.get(name.split(".", 1)[0])


def part_of_tensor(model: nn.Module, name: str) -> str | None:
    """The part of one tensor name of `model` (any supported family)."""
    return _classifier(model)(name)


def parts(model: nn.Module, include_buffers: bool = True) -> dict[str, list[str]]:
    """{"encoder": [...], "decoder": [...], "head": [...]} of tensor names of `model`.

    With include_buffers (default) the normalisation running statistics are listed with their part, since a
    transfer must copy them too. Every tensor belongs to exactly one part; an unknown top-level module is an
    error rather than a silent omission.
    """
    model = _unwrap(model)
    classify = _classifier(model)
    names = _unique_tensor_names(model) if include_buffers else [n for n, _ in model.named_parameters()]
    split: dict[str, list[str]] = {part: [] for part in PART_NAMES}
    for name in names:
        part = classify(name)
        if part is None:
            raise ValueError(f"tensor {name!r} of {type(model).__name__} is in no part")
        split[part].append(name)
    return split


def part_modules(model: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """The largest modules lying wholly in one part, per part (top-level children where the family has a table).

    Used e.g. for putting frozen normalisation layers in eval mode, and as the levels of feature analyses.
    """
    model = _unwrap(model)
    grouped: dict[str, list[tuple[str, nn.Module]]] = {part: [] for part in PART_NAMES}
    if not isinstance(model, UNet):
        table = _part_table(model)
        for name, child in model.named_children():
            part = table.get(name)
            if part is not None:
                grouped[part].append((name, child))
        return grouped
    taken: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in taken):
            continue
        names = [f"{name}.{n}" for n, _ in module.named_parameters()] + [f"{name}.{n}" for n, _ in module.named_buffers()]
        found = {monai_unet_part(n) for n in names}
        if len(found) == 1 and None not in found:
            grouped[found.pop()].append((name, module))
            taken.append(name)
    return grouped


def part_regex(model: nn.Module, part: str) -> str:
    """An anchored regex matching the state-dict keys of one part (for monai's copy_model_state/freeze_layers)."""
    model = _unwrap(model)
    if isinstance(model, UNet):
        names = parts(model)[part]
        return r"^(" + "|".join(re.escape(name) for name in names) + r")$"
    table = _part_table(model)
    prefixes = sorted(name for name, p in table.items() if p == part)
    if not prefixes:
        raise ValueError(f"{type(model).__name__} has no part {part!r}")
    return r"^(" + "|".join(re.escape(p) for p in prefixes) + r")\."


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Number of scalar parameters per part (used in reports and model cards)."""
    model = _unwrap(model)
    by_name = dict(model.named_parameters())
    return {
        part: int(sum(by_name[n].numel() for n in names if n in by_name))
        for part, names in parts(model, include_buffers=False).items()
    }


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Alias-free name -> tensor map of parameters and buffers, the basis for comparing transfers."""
    model = _unwrap(model)
    tensors = dict(model.named_parameters(remove_duplicate=True))
    tensors.update(dict(model.named_buffers(remove_duplicate=True)))
    return tensors


def dynunet_layout(state: dict[str, torch.Tensor]) -> dict | None:
    """spatial_dims, in/out channels and filters of the DynUNet whose tensors `state` holds (None if it holds
    no DynUNet input block), for a weights file that comes without the run.json that recorded them."""
    first = state.get("input_block.conv1.conv.weight")
    if first is None:
        return None
    downs = sorted({int(k.split(".")[1]) for k in state if k.startswith("downsamples.") and k.endswith("conv1.conv.weight")})
    filters = [int(first.shape[0])] + [int(state[f"downsamples.{i}.conv1.conv.weight"].shape[0]) for i in downs]
    filters.append(int(state["bottleneck.conv1.conv.weight"].shape[0]))
    head = state.get("output_block.conv.conv.weight")
    return {"spatial_dims": first.ndim - 2, "filters": filters, "in_channels": int(first.shape[1]),
            "out_channels": int(head.shape[0]) if head is not None else None}


# --- what a state dict is: the family, widths and dimensionality read from its names and shapes ------------

# family -> MONAI class that builds it (the families one can fine-tune in)
FAMILY_CLASSES = {
    "dynunet": "DynUNet", "resnet_unet": "FlexibleUNet", "monai_unet": "UNet", "basic_unet": "BasicUNet",
    "segresnet": "SegResNet", "swin_unetr": "SwinUNETR",
}
_UNET_ADN = re.compile(r"adn\.N\.(weight|running_mean)$")


@dataclass
class Architecture:
    """What a state dict appears to be. `arguments` are the MONAI constructor's, when the tensors fix them."""

    family: str
    description: str
    spatial_dims: int | None = None
    in_channels: int | None = None
    out_channels: int | None = None
    widths: list[int] = field(default_factory=list)
    segmentation: bool = True
    arguments: dict | None = None
    ambiguity: str | None = None  # why `arguments` could not be read, when they could not
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        dims = f"{self.spatial_dims}D" if self.spatial_dims else "dimensionality unknown"
        widths = f", widths {self.widths}" if self.widths else ""
        channels = f", {self.in_channels} input channel(s)" if self.in_channels is not None else ""
        classes = f", {self.out_channels} output channel(s)" if self.out_channels is not None else ""
        return f"{self.description} ({dims}{widths}{channels}{classes})"


def describe_network(model: nn.Module) -> Architecture:
    """The same description for a built network, so a mismatch can name both sides in the same terms."""
    return recognise(state_tensors(model))


def recognise(state: Mapping[str, torch.Tensor]) -> Architecture:
    """The architecture family of a state dict (names without a wrapper prefix), with widths and channels."""
    keys = list(state)
    has = lambda prefix: any(key.startswith(prefix) for key in keys)  # noqa: E731
    shape = lambda key: tuple(state[key].shape) if key in state else None  # noqa: E731
    dims = _conv_dims(state)
    if has("model.0.") and has("model.1.submodule."):
        return _recognise_monai_unet(state, dims)
    if "input_block.conv1.conv.weight" in state and has("bottleneck."):
        convs = ["input_block"] + sorted({k.split(".")[0] + "." + k.split(".")[1] for k in keys if k.startswith("downsamples.")},
                                         key=lambda n: int(n.split(".")[1])) + ["bottleneck"]
        widths = [shape(f"{c}.conv1.conv.weight")[0] for c in convs if shape(f"{c}.conv1.conv.weight")]
        out = shape("output_block.conv.conv.weight")
        return Architecture("dynunet", f"a MONAI DynUNet with {len(widths)} levels", dims,
                            shape("input_block.conv1.conv.weight")[1], out[0] if out else None, widths)
    if "encoder.conv1.weight" in state and has("segmentation_head."):
        layers = [shape(f"encoder.layer{i}.0.conv1.weight") for i in range(1, 5)]
        out = shape("segmentation_head.0.weight")
        return Architecture("resnet_unet", "a MONAI FlexibleUNet with a ResNet encoder", dims,
                            shape("encoder.conv1.weight")[1], out[0] if out else None,
                            [s[0] for s in layers if s])
    if "conv_0.conv_0.conv.weight" in state and has("final_conv."):
        widths = [shape("conv_0.conv_0.conv.weight")[0]] + [
            shape(f"down_{i}.convs.conv_0.conv.weight")[0] for i in range(1, 5) if shape(f"down_{i}.convs.conv_0.conv.weight")]
        out = shape("final_conv.weight")
        return Architecture("basic_unet", "a MONAI BasicUNet", dims, shape("conv_0.conv_0.conv.weight")[1],
                            out[0] if out else None, widths)
    if "convInit.conv.weight" in state and has("conv_final."):
        stages = len({k.split(".")[1] for k in keys if k.startswith("down_layers.")})
        init = shape("convInit.conv.weight")[0]
        out = shape("conv_final.2.conv.weight")
        return Architecture("segresnet", f"a MONAI SegResNet with {stages} stages", dims,
                            shape("convInit.conv.weight")[1], out[0] if out else None,
                            [init * 2**i for i in range(stages)])
    if "swinViT.patch_embed.proj.weight" in state:
        feature = shape("swinViT.patch_embed.proj.weight")
        out = shape("out.conv.conv.weight")
        return Architecture("swin_unetr", "a MONAI SwinUNETR", dims, feature[1], out[0] if out else None,
                            [feature[0] * 2**i for i in range(5)])
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        widths = [shape(f"layer{i}.0.conv1.weight")[0] for i in range(1, 5) if shape(f"layer{i}.0.conv1.weight")]
        classes = shape("fc.weight")
        return Architecture("torchvision_resnet", "a torchvision/timm-style ResNet classifier", dims,
                            shape("conv1.weight")[1], classes[0] if classes else None, widths, segmentation=False,
                            notes=["its layers can seed the encoder of the ResNet U-Net (format torchvision_resnet)"])
    if "encoder.stages.0.0.convs.0.conv.weight" in state:
        stages = sorted({int(k.split(".")[2]) for k in keys if k.startswith("encoder.stages.")})
        widths = [shape(f"encoder.stages.{s}.0.convs.0.conv.weight")[0] for s in stages]
        return Architecture("nnunet_plainconv", "an nnU-Net v2 PlainConvUNet", dims,
                            shape("encoder.stages.0.0.convs.0.conv.weight")[1], None, widths,
                            notes=["it goes into a DynUNet of the same topology (format nnunet_v2)"])
    if "linear.weight" in state and has("conv.layer_0."):
        layers = sorted({int(k.split(".")[1].removeprefix("layer_")) for k in keys if k.startswith("conv.layer_")})
        channels = [shape(f"conv.layer_{i}.0.conv.weight")[1] for i in layers if shape(f"conv.layer_{i}.0.conv.weight")]
        latent = shape("linear.weight")[1]
        return Architecture(
            "monai_gan_generator",
            f"a MONAI GAN Generator (monai.networks.nets.Generator: a latent vector of {latent} values -> an image, "
            f"through a linear layer and {len(channels)} transposed-convolution stages)",
            dims, None, channels[-1] if channels else None, channels, segmentation=False,
            notes=["a generator decodes a latent vector: it has no encoder that reads an image and no U-Net "
                   "decoder with skip connections, so none of its tensors can seed a segmentation U-Net"],
        )
    convs = [(k, v) for k, v in state.items() if k.endswith("weight") and v.ndim in (4, 5)]
    return Architecture(
        "unknown", f"an unrecognised network ({len(convs)} convolution weights, e.g. {keys[:2]})", dims,
        convs[0][1].shape[1] if convs else None, None, [v.shape[0] for _, v in convs[:6]], segmentation=False,
    )


def _conv_dims(state: Mapping[str, torch.Tensor]) -> int | None:
    ranks = {t.ndim for k, t in state.items() if k.endswith("weight") and t.ndim in (4, 5)}
    return ranks.pop() - 2 if len(ranks) == 1 else None


def _recognise_monai_unet(state: Mapping[str, torch.Tensor], dims: int | None) -> Architecture:
    """MONAI UNet: channels, strides and residual units from the nesting and the shapes, checked for ambiguity.

    Level d's blocks live under P_d = "model." + "1.submodule." * d: the down block at P_d + "0.", the up block at
    P_d + "2.", and the bottom block directly under the deepest "submodule.".
    """
    prefixes = ["model."]
    while any(key.startswith(prefixes[-1] + "1.submodule.") for key in state):
        prefixes.append(prefixes[-1] + "1.submodule.")
    downs = [p + "0." for p in prefixes[:-1]] + [prefixes[-1]]  # the last prefix is the bottom block itself
    units = sorted({int(m.group(1)) for k in state for m in [re.match(re.escape(downs[0]) + r"conv\.unit(\d+)\.", k)] if m})
    num_res_units = len(units)
    first = (lambda d: f"{d}conv.unit0.conv.weight") if num_res_units else (lambda d: f"{d}conv.weight")
    if any(first(d) not in state for d in downs):
        missing = [first(d) for d in downs if first(d) not in state]
        return Architecture("monai_unet", "a MONAI UNet whose blocks could not be read", dims, notes=[],
                            ambiguity=f"missing the first convolution of a level: {missing[:2]}")
    channels = [state[first(d)].shape[0] for d in downs]
    kernel = state[first(downs[0])].shape[-1]
    top_up = "model.2.0.conv.weight" if "model.2.0.conv.weight" in state else "model.2.conv.weight"
    out = state[top_up].shape[1] if top_up in state else None  # transposed conv: (in, out, *kernel)
    arch = Architecture(
        "monai_unet", f"a MONAI UNet with {len(channels)} levels and {num_res_units} residual units per block",
        dims, state[first(downs[0])].shape[1], out, [int(c) for c in channels],
    )
    arguments = {
        "name": "UNet", "spatial_dims": dims, "in_channels": arch.in_channels, "channels": arch.widths,
        "num_res_units": num_res_units, "kernel_size": int(kernel),
        "up_kernel_size": int(state[top_up].shape[-1]) if top_up in state else 3,
    }
    if not num_res_units:
        arch.ambiguity = ("without residual units no tensor shows the strides (a strided and an unstrided "
                          "convolution have the same weights); give source_network: {name: UNet, strides: [...], ...}")
        return arch
    # a strided residual unit carries a kernel-sized residual convolution, an unstrided one a 1x1 (or none)
    residual_kernels = [state.get(f"{d}residual.weight") for d in downs[:-1]]
    if any(r is None or r.shape[-1] == 1 for r in residual_kernels):
        arch.ambiguity = "a down block has no strided residual convolution, so its stride cannot be read"
        return arch
    arguments["strides"] = [2] * (len(channels) - 1)
    arch.notes.append("strides: each down block is strided (its residual convolution is kernel-sized); the step "
                      "itself is not stored in any tensor, so MONAI UNet's usual 2 is used")
    norms = {m.group(1) for k in state for m in [_UNET_ADN.search(k)] if m}
    if "running_mean" in norms:
        arguments["norm"] = "BATCH"
    elif norms:
        arch.ambiguity = ("normalisation with affine weights but no running statistics (instance with affine, group "
                          "or layer norm) cannot be told apart; give source_network: {name: UNet, norm: ...}")
        return arch
    else:
        arguments["norm"] = "INSTANCE"
        arch.notes.append("norm: no normalisation tensors, which is MONAI's default INSTANCE norm (or none)")
    if not any(k.endswith("adn.A.weight") for k in state):
        arch.ambiguity = "a parameter-free activation (not MONAI's default PReLU) cannot be read; give act explicitly"
        return arch
    arguments["act"] = "PRELU"
    arguments["bias"] = f"{first(downs[0])[:-len('weight')]}bias" in state
    arch.notes.append("dropout is not stored in a checkpoint: fine-tuning uses dropout 0.0 unless source_network says")
    arch.arguments = arguments
    return arch
