"""One builder for the bundle's network: medtransfer's DynUNet, or a source's own MONAI architecture.

A source architecture is a literal mapping ``{name: UNet, channels: [...], strides: [...], ...}``. It is checked
against an allow-list of MONAI classes and of their arguments (names, types, allowed strings) and is never
evaluated: a checkpoint's description is data from elsewhere. `architecture_from_bundle` reads a source MONAI
bundle's ``network_def`` as the same kind of data (``@key`` references to literals are followed; ``$``
expressions are refused). The class count is always the target's (the binary head replaces the source's).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml
from monai.networks.nets import BasicUNet, DynUNet, SegResNet, SwinUNETR, UNet
from torch import nn

from medtransfer.networks.unets import DEFAULT_FILTERS, _seeded, build_dynunet


class NetworkSpecError(ValueError):
    """A source network description is not an allowed, literal MONAI architecture; the message says why."""


_NORMS = {"batch", "instance", "group", "layer", "instance_nvfuser"}
_ACTS = {"prelu", "relu", "leakyrelu", "elu", "gelu", "swish", "tanh", "sigmoid", "selu", "relu6", "mish"}


def _int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _ints(value):
    return isinstance(value, (list, tuple)) and bool(value) and all(_int(v) for v in value)


def _int_or_ints(value):
    return _int(value) or _ints(value)


def _number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or value is None


def _layer(allowed):
    """A MONAI layer name (``"batch"``) or ``[name, {literal options}]``."""
    def check(value):
        if isinstance(value, str):
            return value.lower() in allowed
        return (
            isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str)
            and value[0].lower() in allowed and isinstance(value[1], Mapping)
            and all(isinstance(k, str) and isinstance(v, (int, float, bool, str)) for k, v in value[1].items())
        )
    return check


def _one_of(*options):
    return lambda value: value in options


_BOOL = lambda value: isinstance(value, bool)  # noqa: E731

# class name -> (MONAI class, {argument: check}); spatial_dims, in_channels and out_channels are handled apart
ALLOWED_NETWORKS: dict[str, tuple[type[nn.Module], dict]] = {
    "UNet": (UNet, {
        "channels": _ints, "strides": _ints, "kernel_size": _int_or_ints, "up_kernel_size": _int_or_ints,
        "num_res_units": _int, "act": _layer(_ACTS), "norm": _layer(_NORMS), "dropout": _number, "bias": _BOOL,
        "adn_ordering": _one_of("NDA", "NAD", "DNA", "DAN", "AND", "ADN", "ND", "NA", "DN", "DA", "AN", "AD"),
    }),
    "BasicUNet": (BasicUNet, {
        "features": lambda v: _ints(v) and len(v) == 6, "act": _layer(_ACTS), "norm": _layer(_NORMS),
        "bias": _BOOL, "dropout": _number, "upsample": _one_of("deconv", "pixelshuffle", "nontrainable"),
    }),
    "SegResNet": (SegResNet, {
        "init_filters": _int, "dropout_prob": _number, "act": _layer(_ACTS), "norm": _layer(_NORMS),
        "num_groups": _int, "use_conv_final": lambda v: v is True, "blocks_down": _ints, "blocks_up": _ints,
        "upsample_mode": _one_of("deconv", "pixelshuffle", "nontrainable"),
    }),
    "SwinUNETR": (SwinUNETR, {
        "patch_size": _int, "depths": _ints, "num_heads": _ints, "window_size": _int_or_ints, "qkv_bias": _BOOL,
        "mlp_ratio": _number, "feature_size": _int, "norm_name": _layer(_NORMS), "drop_rate": _number,
        "attn_drop_rate": _number, "dropout_path_rate": _number, "normalize": _BOOL, "patch_norm": _BOOL,
        "use_v2": _BOOL,
    }),
    "DynUNet": (DynUNet, {
        "kernel_size": lambda v: isinstance(v, (list, tuple)) and all(_int_or_ints(x) for x in v),
        "strides": lambda v: isinstance(v, (list, tuple)) and all(_int_or_ints(x) for x in v),
        "upsample_kernel_size": lambda v: isinstance(v, (list, tuple)) and all(_int_or_ints(x) for x in v),
        "filters": _ints, "norm_name": _layer(_NORMS), "act_name": _layer(_ACTS), "res_block": _BOOL,
        "trans_bias": _BOOL, "dropout": _number,
    }),
}
# how MONAI configs and Python code name the allowed classes
_TARGET_NAMES = {
    alias: name
    for name, (cls, _) in ALLOWED_NETWORKS.items()
    for alias in (name, f"monai.networks.nets.{name}", f"{cls.__module__}.{name}")
}
_NOT_SEGMENTATION = {"Generator": "a GAN generator (latent vector -> image)", "Discriminator": "a GAN discriminator",
                     "Classifier": "a classifier", "Regressor": "a regressor", "AutoEncoder": "an autoencoder",
                     "VarAutoEncoder": "a variational autoencoder"}
# settings of the source that are training choices, not architecture: fine-tuning sets its own
_IGNORED = {"dropout", "dropout_prob", "drop_rate", "attn_drop_rate", "dropout_path_rate"}


def check_architecture(spec: Mapping, where: str = "source_network") -> dict:
    """The validated literal mapping (a copy), or NetworkSpecError naming the offending entry."""
    if not isinstance(spec, Mapping):
        raise NetworkSpecError(f"{where}: expected a mapping {{name: UNet, ...}}, got {type(spec).__name__}")
    name = spec.get("name")
    if name not in ALLOWED_NETWORKS:
        what = f" ({_NOT_SEGMENTATION[name]}, not a segmentation network)" if name in _NOT_SEGMENTATION else ""
        raise NetworkSpecError(f"{where}: name {name!r}{what} is not one of the allowed networks {sorted(ALLOWED_NETWORKS)}")
    _, checks = ALLOWED_NETWORKS[name]
    problems = []
    for key, value in spec.items():
        if key in ("name", "out_channels"):
            continue
        if key in ("spatial_dims", "in_channels"):
            if not _int(value) or (key == "spatial_dims" and value not in (2, 3)) or value < 1:
                problems.append(f"{key}={value!r}")
            continue
        if key not in checks:
            problems.append(f"{key} (not an allowed argument of {name}: {sorted(checks)})")
        elif not checks[key](value):
            problems.append(f"{key}={value!r}")
    if problems:
        raise NetworkSpecError(f"{where}: {name} arguments not allowed or not literal: {'; '.join(problems)}")
    return {key: (list(value) if isinstance(value, tuple) else value) for key, value in spec.items()}


def build_network(
    spatial_dims: int,
    filters: Sequence[int] = DEFAULT_FILTERS,
    init_seed: int | None = None,
    architecture: Mapping | None = None,
    in_channels: int = 1,
    out_channels: int = 2,
) -> nn.Module:
    """medtransfer's DynUNet (`architecture` None), or the allow-listed MONAI `architecture` with our class count.

    The source's dropout is a training choice and is left out; its class count is replaced by `out_channels`.
    """
    if architecture is None:
        return build_dynunet(spatial_dims, in_channels=in_channels, out_channels=out_channels, filters=filters,
                             init_seed=init_seed)
    name, arguments = network_arguments(spatial_dims, architecture, in_channels, out_channels)
    with _seeded(init_seed):
        return ALLOWED_NETWORKS[name][0](**arguments)


def network_arguments(spatial_dims: int, architecture: Mapping, in_channels: int = 1,
                      out_channels: int = 2) -> tuple[str, dict]:
    """The MONAI class name and the literal keyword arguments `build_network` builds `architecture` with
    (an exported bundle's ``network_def`` states the same)."""
    spec = check_architecture(architecture)
    if spec.get("spatial_dims", spatial_dims) != spatial_dims:
        raise NetworkSpecError(
            f"source_network is {spec['spatial_dims']}D but this bundle trains a {spatial_dims}D network; use the "
            f"{spec['spatial_dims']}D bundle"
        )
    arguments = {k: v for k, v in spec.items() if k not in {"name", "out_channels", "spatial_dims", *_IGNORED}}
    arguments.setdefault("in_channels", in_channels)
    if spec["name"] == "DynUNet":
        arguments.setdefault("kernel_size", [3] * len(arguments.get("strides", [])))
    return spec["name"], {"spatial_dims": spatial_dims, "out_channels": out_channels, **arguments}


def architecture_from_bundle(path: str | Path) -> dict:
    """A source MONAI bundle's ``network_def`` as a checked literal mapping, read as data, never evaluated.

    `path` is the bundle folder (its configs/inference.* or train.* is read) or one config file.
    """
    path = Path(path)
    config_file = path if path.is_file() else _bundle_config(path)
    try:
        text = config_file.read_text()
        config = json.loads(text) if config_file.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise NetworkSpecError(f"{config_file}: cannot read the bundle config: {error}") from None
    definition = config.get("network_def") if isinstance(config, Mapping) else None
    if not isinstance(definition, Mapping) or not isinstance(definition.get("_target_"), str):
        raise NetworkSpecError(f"{config_file}: no network_def with a _target_ (a MONAI bundle config has one)")
    target = definition["_target_"]
    short = target.rsplit(".", 1)[-1]
    if target not in _TARGET_NAMES:
        what = f": it is {_NOT_SEGMENTATION[short]}, not a segmentation network" if short in _NOT_SEGMENTATION else ""
        raise NetworkSpecError(
            f"{config_file}: network_def _target_ {target!r}{what}; medtransfer fine-tunes "
            f"{sorted(ALLOWED_NETWORKS)} (MONAI classes named directly)"
        )
    spec = {"name": _TARGET_NAMES[target]}
    for key, value in definition.items():
        if key != "_target_":
            spec[key] = _literal(value, config, f"{config_file}: network_def::{key}")
    return check_architecture(spec, f"{config_file}: network_def")


def _bundle_config(folder: Path) -> Path:
    for name in ("inference", "train"):
        for suffix in (".json", ".yaml", ".yml"):
            if (candidate := folder / "configs" / f"{name}{suffix}").is_file():
                return candidate
    raise NetworkSpecError(f"{folder}: not a MONAI bundle folder (no configs/inference.* or configs/train.*)")


def _literal(value, config: Mapping, where: str, depth: int = 0):
    """A literal value; ``@key`` follows a top-level reference (to a literal); ``$`` expressions are refused."""
    if isinstance(value, str) and value.startswith("$"):
        raise NetworkSpecError(f"{where} = {value!r} is an expression: medtransfer reads network_def as data only")
    if isinstance(value, str) and value.startswith("@"):
        key = value[1:]
        if depth > 8 or "#" in key or "::" in key or key not in config:
            raise NetworkSpecError(f"{where} = {value!r}: only references to top-level literal keys can be read")
        return _literal(config[key], config, where, depth + 1)
    if isinstance(value, list):
        return [_literal(v, config, where, depth) for v in value]
    if isinstance(value, Mapping):
        return {k: _literal(v, config, where, depth) for k, v in value.items()}
    return value
