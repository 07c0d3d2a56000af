"""The inference config of an exported bundle that runs with plain MONAI, and the code it ships in ``scripts/``.

``configs/inference.json`` (the Model Zoo convention) names MONAI classes only, with literal arguments:
``monai.networks.nets.DynUNet`` (or a source architecture: ``UNet``, ``BasicUNet``, ``SegResNet``,
``SwinUNETR``), MONAI's standard transforms, ``SlidingWindowInferer``,
``SupervisedEvaluator`` and ``CheckpointLoader`` (``torch.load(weights_only=True)``). What MONAI lacks ships as
code in the bundle's own ``scripts/`` package, which ``monai.bundle run`` puts on ``sys.path``: the checking
DICOM series reader (``scripts.scan_loader.LoadScand``), the per-case image check (``scripts.checks``), the
input listing (``scripts.inputs``), the weights checksum check (``scripts.integrity``) and, where MONAI's classes
cannot say it, the network (``scripts.networks``: the ResNet-encoder U-Net as a FlexibleUNet that TorchScript
compiles; an ensemble and its sliding-window inferer). These are copies of
medtransfer's own modules, written at export, so a bundle and medtransfer read scans the same way.

medtransfer's safe loader reads such a config as data: it recognises the preprocessing and postprocessing
below by comparing them with :func:`preprocessing_def` / :func:`postprocessing_def` (nothing is evaluated)
and then uses its own identical chain.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from monai.networks.blocks.dynunet_block import UnetResBlock
from monai.networks.nets import DynUNet, FlexibleUNet

import medtransfer
from medtransfer.networks import build_resnet_unet
from medtransfer.networks.builder import network_arguments

_BUILDER_DEFAULTS = {name: p.default for name, p in inspect.signature(build_resnet_unet).parameters.items()}
COMPOSE = "monai.transforms.Compose"
DYNUNET = "monai.networks.nets.DynUNet"
FLEXIBLE_UNET = "monai.networks.nets.FlexibleUNet"  # bundles exported before scripts.networks
SCRIPTABLE_FLEXIBLE_UNET = "scripts.networks.ScriptableFlexibleUNet"
ENSEMBLE = "scripts.networks.ProbabilityEnsemble"
SLIDING_WINDOW = "monai.inferers.SlidingWindowInferer"
ENSEMBLE_SLIDING_WINDOW = "scripts.networks.EnsembleSlidingWindowInferer"
# the source architectures a run can fine-tune in (medtransfer.networks.builder.ALLOWED_NETWORKS), as MONAI names them
SOURCE_ARCHITECTURES = ("UNet", "BasicUNet", "SegResNet", "SwinUNETR", "DynUNet")
INTENSITY_PERCENTILES = {"lower": 0.5, "upper": 99.5, "b_min": 0.0, "b_max": 1.0, "clip": True}
REQUIRED_PACKAGES = ("monai", "torch", "pytorch-ignite", "nibabel", "pillow", "pydicom", "SimpleITK")

# bundle file -> (medtransfer module copied into it, {import line in medtransfer: line in the bundle})
SCRIPTS: dict[str, tuple[str, dict[str, str]]] = {
    "scripts/dicom.py": ("medtransfer.data.dicom", {
        "from medtransfer.errors import MedtransferError":
            "class MedtransferError(Exception):  # medtransfer.errors.MedtransferError, the base of input errors\n"
            "    pass"}),
    "scripts/readers.py": ("medtransfer.data.readers", {
        "from medtransfer.data.dicom import read_series": "from .dicom import read_series"}),
    "scripts/scan_loader.py": ("medtransfer.inference.scan_loader", {
        "from medtransfer.data.readers import DicomSeriesReader": "from .readers import DicomSeriesReader"}),
    "scripts/checks.py": ("medtransfer.data.checks", {
        "from medtransfer.data.manifest import ManifestError":
            "ManifestError = ValueError  # medtransfer.data.ManifestError is a ValueError"}),
    "scripts/inputs.py": ("medtransfer.inference.inputs", {}),
    "scripts/integrity.py": ("medtransfer.inference.bundle_integrity", {}),
    # the learned post-processing (needs scipy: listed in the metadata's required packages when used)
    "scripts/postprocess.py": ("medtransfer.inference.postprocess", {}),
    # networks MONAI's classes cannot state with literal arguments (scriptable ResNet U-Net, ensembles)
    "scripts/networks.py": ("medtransfer.inference.bundle_networks", {}),
}
POSTPROCESS_STEP = "scripts.postprocess.PostprocessMaskd"
MASK_STEP = "scripts.scan_loader.SingleChannelMaskd"
SCRIPTS_INIT = '"""Code this bundle\'s configs/inference.json uses beyond MONAI (copied from medtransfer at export)."""\n'


class StandaloneError(ValueError):
    """The exported bundle would not run without medtransfer (a network or a script it cannot express)."""


def _plain(value):
    """Tuples to lists, recursively: what the config holds after a JSON round trip."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def network_def(network: torch.nn.Module, config: dict, channels: int = 1,
                architecture: Mapping | None = None) -> dict:
    """The run's network as a class with literal arguments (read off the built DynUNet itself).

    ``channels``: the input channels of a FlexibleUNet or a source architecture (a DynUNet states its own).
    ``architecture``: the run's checked source architecture (``source_network``), when it fine-tuned in one."""
    if architecture is not None:  # the MONAI class and arguments medtransfer.networks.build_network used
        name, arguments = network_arguments(int(config["spatial_dims"]), architecture, int(channels), 2)
        return {"_target_": f"monai.networks.nets.{name}", **_plain(arguments)}
    if isinstance(network, DynUNet):
        return {
            "_target_": DYNUNET,
            "spatial_dims": int(network.spatial_dims),
            "in_channels": int(network.in_channels),
            "out_channels": int(network.out_channels),
            "kernel_size": _plain(network.kernel_size),
            "strides": _plain(network.strides),
            "upsample_kernel_size": _plain(network.upsample_kernel_size),
            "filters": _plain(network.filters),
            "dropout": _plain(network.dropout),
            "norm_name": _plain(network.norm_name),
            "act_name": _plain(network.act_name),
            "deep_supervision": bool(network.deep_supervision),
            "deep_supr_num": int(network.deep_supr_num),
            "res_block": network.conv_block is UnetResBlock,
            "trans_bias": bool(network.trans_bias),
        }
    if isinstance(network, FlexibleUNet):  # built by medtransfer.networks.build_resnet_unet
        arguments = {
            "_target_": SCRIPTABLE_FLEXIBLE_UNET,  # FlexibleUNet itself cannot be scripted (Model Zoo ckpt_export)
            "in_channels": int(channels),
            "out_channels": 2,
            "backbone": str(config["backbone"]),
            "pretrained": False,
            "spatial_dims": int(config["spatial_dims"]),
            "is_pad": True,
        }
        decoder = config.get("decoder_channels") or _BUILDER_DEFAULTS["decoder_channels"]
        arguments["decoder_channels"] = [int(c) for c in decoder]
        return arguments
    raise StandaloneError(f"no MONAI class with literal arguments describes a {type(network).__name__}")


def ensemble_def(members: Sequence[dict]) -> dict:
    """An ensemble's network_def: every member's own network_def, their softmax probabilities averaged."""
    return {"_target_": ENSEMBLE, "members": [dict(member) for member in members]}


def preprocessing_def(spatial_dims: int, target_spacing, channels: int = 1) -> dict:
    """medtransfer's inference chain (``eval_transforms(..., with_label=False, channels=...)``) as MONAI transforms.

    A grey model's chain names no channel count (ValidateCased's default is one; one channel's percentiles are the
    same channel-wise or not), so bundles exported before colour input existed still compare equal. A colour or
    multi-channel model's chain checks its count and normalises each channel on its own, as training did."""
    keys = ["image"]
    check = {"_target_": "scripts.checks.ValidateCased", "keys": keys, "dimensions": int(spatial_dims),
             "label_map": None}
    scale = {"_target_": "monai.transforms.ScaleIntensityRangePercentilesd", "keys": "image", **INTENSITY_PERCENTILES}
    if int(channels) != 1:
        check["channels"] = int(channels)
        scale["channel_wise"] = True
    chain = [
        {"_target_": "scripts.scan_loader.LoadScand", "keys": keys, "image_only": True},
        {"_target_": "monai.transforms.EnsureChannelFirstd", "keys": keys},
        check,
    ]
    if int(spatial_dims) == 3:
        chain.append({"_target_": "monai.transforms.Orientationd", "keys": keys, "axcodes": "RAS"})
    if target_spacing:
        chain.append({"_target_": "monai.transforms.Spacingd", "keys": keys,
                      "pixdim": [float(s) for s in target_spacing], "mode": ["bilinear"]})
    chain += [scale, {"_target_": "monai.transforms.EnsureTyped", "keys": "image", "dtype": "float32"}]
    return {"_target_": COMPOSE, "transforms": chain}


def postprocessing_def(postprocess: dict | None = None, channels: int = 1) -> dict:
    """argmax, [the learned post-processing on the network's grid,] back to the input's geometry (nearest),
    saved as uint8 ``<name>_seg<ext>``. ``postprocess``: PostprocessMaskd's arguments (run.json ``postprocessing``).
    A model of colour or multi-channel input marks its mask as grey before saving (``SingleChannelMaskd``).
    """
    learned = [{"_target_": POSTPROCESS_STEP, "keys": "pred", **postprocess}] if postprocess else []
    as_grey = [{"_target_": MASK_STEP, "keys": "pred"}] if int(channels) != 1 else []
    return {
        "_target_": COMPOSE,
        "transforms": [
            {"_target_": "monai.transforms.AsDiscreted", "keys": "pred", "argmax": True},
            *learned,
            {"_target_": "monai.transforms.Invertd", "keys": "pred", "transform": "@preprocessing",
             "orig_keys": "image", "nearest_interp": True, "to_tensor": True},
            *as_grey,
            {"_target_": "monai.transforms.SaveImaged", "keys": "pred", "output_dir": "@output_dir",
             "output_postfix": "seg", "output_ext": "@output_ext", "output_dtype": "uint8",
             "separate_folder": False, "resample": False, "print_log": False},
        ],
    }


def spacing_in(preprocessing) -> list | None:
    """The target spacing a preprocessing config states (its Spacingd ``pixdim``), read as data."""
    transforms = preprocessing.get("transforms") if isinstance(preprocessing, dict) else None
    for item in transforms if isinstance(transforms, list) else []:
        if isinstance(item, dict) and item.get("_target_") == "monai.transforms.Spacingd":
            return item.get("pixdim")
    return None


def inference_config(network: torch.nn.Module | None, config: dict, target_spacing, roi_size, sw_batch_size: int = 4,
                     overlap: float = 0.25, postprocess: dict | None = None, channels: int = 1,
                     definition: dict | None = None) -> dict:
    """The whole configs/inference.json: MONAI wiring, the run's settings as literal arguments.

    ``channels``: the training manifest's input channels (grey 1, RGB 3, MRI sequences). ``definition``: the
    network_def when it is not read off ``network`` (a source architecture, an ensemble)."""
    dims = int(config["spatial_dims"])
    definition = definition if definition is not None else network_def(network, config, channels)
    ensemble = definition.get("_target_") == ENSEMBLE
    return {
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/sample_data'",
        "input_dir": "@dataset_dir",
        "output_dir": "$@bundle_root + '/eval'",
        "output_ext": ".nii.gz",
        "checkpoint": "$@bundle_root + '/models/model.pt'",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": definition,
        "network": "$@network_def.to(@device)",
        "preprocessing": preprocessing_def(dims, target_spacing, channels),
        "dataset": {
            "_target_": "monai.data.Dataset",
            "data": {"_target_": "scripts.inputs.list_inputs", "input_dir": "@input_dir"},
            "transform": "@preprocessing",
        },
        "dataloader": {"_target_": "monai.data.DataLoader", "dataset": "@dataset", "batch_size": 1,
                       "shuffle": False, "num_workers": 0},
        "inferer": {"_target_": ENSEMBLE_SLIDING_WINDOW if ensemble else SLIDING_WINDOW,
                    "roi_size": [int(s) for s in roi_size],
                    "sw_batch_size": int(sw_batch_size), "overlap": float(overlap)},
        "postprocessing": postprocessing_def(postprocess, channels),
        "handlers": [{"_target_": "monai.handlers.StatsHandler", "iteration_log": False}],
        "evaluator": {
            "_target_": "monai.engines.SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "checkpointloader": {"_target_": "monai.handlers.CheckpointLoader", "load_path": "@checkpoint",
                             "load_dict": {"model": "@network"}, "map_location": "@device"},
        "imports": ["$import sys"],
        "initialize": [
            # monai.bundle run adds the bundle to sys.path only in run(); scripts/ is needed from here on
            "$sys.path.insert(1, @bundle_root) if @bundle_root not in sys.path else None",
            "$monai.utils.set_determinism(seed=0)",
            {"_target_": "scripts.integrity.check_weights", "bundle_root": "@bundle_root",
             "checkpoint": "@checkpoint"},
            "$@checkpointloader(@evaluator)",
        ],
        "run": ["$@evaluator.run()"],
    }


# --- scripts/ -----------------------------------------------------------------------------------------------


def _bundle_source(module: str, rewrites: dict[str, str]) -> str:
    origin = importlib.util.find_spec(module).origin
    text = Path(origin).read_text()
    for line, replacement in rewrites.items():
        if text.count(line) != 1:
            raise StandaloneError(f"{origin}: expected the line {line!r} once, to rewrite it for the bundle")
        text = text.replace(line, replacement)
    for node in ast.walk(ast.parse(text)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        bad = [n for n in names if n == "medtransfer" or n.startswith("medtransfer.")]
        if bad:
            raise StandaloneError(f"{origin} imports {bad[0]}: add a rewrite to standalone.SCRIPTS for the bundle")
    relative = module.replace(".", "/") + ".py"
    return f"# Copied from medtransfer {medtransfer.__version__} ({relative}) by `medtransfer export`.\n{text}"


def sample_configs() -> list[dict]:
    """inference.json as `medtransfer export` writes it, for every network class and with and without a learned
    post-processing step: what `bundle verify`'s allow-list must admit (medtransfer.inference.config_expressions)."""
    from medtransfer.networks import build_dynunet

    configs = []
    for dims in (2, 3):
        network = build_dynunet(dims, filters=[4, 8, 16])
        for postprocess in (None, {"method": "keep_largest_component"}):
            configs.append(inference_config(network, {"spatial_dims": dims}, [1.0] * dims, [8] * dims,
                                            postprocess=postprocess))
    colour = inference_config(build_dynunet(2, in_channels=3, filters=[4, 8, 16]), {"spatial_dims": 2}, None, [8, 8],
                              channels=3)
    old_resnet = {**configs[0], "network_def": {**configs[0]["network_def"], "_target_": FLEXIBLE_UNET}}
    resnet = {**configs[0], "network_def": {**configs[0]["network_def"], "_target_": SCRIPTABLE_FLEXIBLE_UNET}}
    sources = [{**configs[0], "network_def": {"_target_": f"monai.networks.nets.{name}"}} for name in SOURCE_ARCHITECTURES]
    ensemble = inference_config(None, {"spatial_dims": 2}, [1.0, 1.0], [8, 8],
                                definition=ensemble_def([configs[0]["network_def"]] * 2))
    return configs + [colour, old_resnet, resnet, *sources, ensemble]


def write_scripts(bundle: Path) -> list[str]:
    """Write scripts/ into ``bundle``; return the written paths (relative)."""
    folder = bundle / "scripts"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text(SCRIPTS_INIT)
    written = ["scripts/__init__.py"]
    for relative, (module, rewrites) in SCRIPTS.items():
        (bundle / relative).write_text(_bundle_source(module, rewrites))
        written.append(relative)
    return written
