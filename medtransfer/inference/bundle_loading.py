"""Load a segmentation model from a MONAI bundle or a finished run folder, without running code nobody expected.

A MONAI bundle's configs are programs: ``_target_`` names any importable callable, ``$`` strings are Python
expressions, ``$import`` statements run as soon as *any* item is resolved, and ``configs/logging.conf`` is applied
with ``logging.config.fileConfig`` (MONAI advisories GHSA-873f-pvrv-4x83 and others). MONAI 1.6.1 only warns.

So a shared bundle is read here as *data* (safe mode, the default):

- ``configs/metadata.json`` and ``configs/inference.{yaml,json}`` are parsed as plain JSON / YAML; nothing in
  them is evaluated, and ``logging.conf`` is never applied.
- Three entries are used, and each must match an allow-list, with literal arguments only (numbers, strings,
  lists, dicts, or ``@key`` references to top-level keys that are themselves literal):
  ``network_def`` (``_target_`` one of ``NETWORK_TARGETS``), ``preprocessing`` (medtransfer's standard chain:
  ``medtransfer.data.eval_transforms`` with ``with_label: false``, or, in bundles that run without medtransfer,
  exactly the MONAI ``Compose`` that ``standalone.preprocessing_def`` writes for the bundle's dimensions and
  spacing) and, optionally, ``inferer`` (``SlidingWindowInferer``). A ``postprocessing`` entry, when present, must
  be medtransfer's standard one (either form); it is not built, because ``segment`` does that step itself
  (argmax, inversion, NIfTI / DICOM-SEG writing). The standard chains are recognised by comparing the config
  data; their ``scripts/`` code is never imported — medtransfer runs its own copy of that code.
- Every other entry of the config (``initialize``, ``run``, datasets, handlers, ``device`` expressions, ...) is
  ignored: it is never evaluated.
- ``models/model.pt`` must match the sha256 the metadata lists (``files_sha256``) and is read with
  ``torch.load(weights_only=True)``, so a file holding pickled objects is refused before any of it runs.

Anything else (custom network code in ``scripts/``, ``$`` expressions, other transforms) is refused with a message
listing what the bundle wanted to execute. ``trusted=True`` (``--trusted``) lifts the allow-list and builds the
network, preprocessing and inferer with MONAI's ``ConfigWorkflow`` — only for bundles whose authors you trust and
whose configs you have read. The weights are still read with ``weights_only=True`` and checked against the sha256.

A run folder (``run.json`` + ``model.pt`` from ``train.yaml``) is the user's own training output: the network is
built from the run's recorded settings by medtransfer's builders, no config is evaluated at all.
"""

from __future__ import annotations

from medtransfer.errors import MedtransferError

import json
import logging
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from monai.inferers import sliding_window_inference
from monai.networks.nets import BasicUNet, DynUNet, FlexibleUNet, SegResNet, SwinUNETR, UNet
from monai.transforms import Compose

from medtransfer import registry
from medtransfer.atomic import sha256_of
from medtransfer.inference import standalone
from medtransfer.inference.bundle_networks import EnsembleSlidingWindowInferer, ProbabilityEnsemble, ScriptableFlexibleUNet
from medtransfer.networks import NetworkConfigError, NetworkSpecError, build_dynunet, build_resnet_unet
from medtransfer.networks import check_architecture
from medtransfer.training.run_folder import RunDirectoryError, RunFolder
from medtransfer.training.weights import WeightsError, load_weights, read_state_dict

logger = logging.getLogger(__name__)

WEIGHTS_PATH = "models/model.pt"
CHECKSUM_KEY = "files_sha256"  # metadata.json: {"models/model.pt": "<sha256 hex>", "models/model.ts": ...}
CONFIG_NAMES = ("inference.yaml", "inference.json", "inference.yml")

NETWORK_TARGETS: dict[str, Callable] = {
    "medtransfer.networks.build_dynunet": build_dynunet,
    "medtransfer.networks.unets.build_dynunet": build_dynunet,
    "medtransfer.networks.build_resnet_unet": build_resnet_unet,
    "medtransfer.networks.unets.build_resnet_unet": build_resnet_unet,
    "DynUNet": DynUNet,
    "monai.networks.nets.DynUNet": DynUNet,
    "monai.networks.nets.dynunet.DynUNet": DynUNet,
    "FlexibleUNet": FlexibleUNet,
    "FlexUNet": FlexibleUNet,
    "monai.networks.nets.FlexibleUNet": FlexibleUNet,
    "monai.networks.nets.flexible_unet.FlexibleUNet": FlexibleUNet,
    standalone.SCRIPTABLE_FLEXIBLE_UNET: ScriptableFlexibleUNet,  # medtransfer's copy of the bundle's scripts/
    # a run fine-tuned in its source's own architecture (arguments checked by networks.check_architecture)
    "monai.networks.nets.UNet": UNet,
    "monai.networks.nets.BasicUNet": BasicUNet,
    "monai.networks.nets.SegResNet": SegResNet,
    "monai.networks.nets.SwinUNETR": SwinUNETR,
}
# what MONAI's parser imports for each allow-listed target that lives in a bundle's scripts/ (medtransfer's copy)
IMPORTABLE_TARGETS = {
    standalone.SCRIPTABLE_FLEXIBLE_UNET: "medtransfer.inference.bundle_networks.ScriptableFlexibleUNet",
    standalone.ENSEMBLE: "medtransfer.inference.bundle_networks.ProbabilityEnsemble",
}
PREPROCESSING_TARGETS = ("medtransfer.data.eval_transforms", "medtransfer.data.transforms.eval_transforms")
PREPROCESSING_ARGS = ("dimensions", "target_spacing", "with_label", "label_map", "channels")
INFERER_TARGETS = ("SlidingWindowInferer", "monai.inferers.SlidingWindowInferer", standalone.ENSEMBLE_SLIDING_WINDOW)
INFERER_ARGS = ("roi_size", "sw_batch_size", "overlap", "mode")
POSTPROCESSING_TARGETS = ("medtransfer.inference.transforms.inference_postprocessing",)
DEFAULT_SW_BATCH_SIZE = 4
DEFAULT_OVERLAP = 0.25


class BundleError(MedtransferError, ValueError):
    """A bundle or run folder cannot be used (missing files, wrong checksum, unloadable weights)."""


class UntrustedBundleError(BundleError):
    """A bundle wants to execute something outside the safe allow-list; ``--trusted`` would allow it."""


@dataclass
class SegmentationModel:
    """Everything ``segment`` needs: a network with weights loaded, its preprocessing and the window settings."""

    network: torch.nn.Module
    spatial_dims: int
    preprocessing: Compose  # deterministic chain that loads a scan into the network's space (invertible)
    roi_size: list[int]
    source: str  # what the model came from, for messages
    sw_batch_size: int = DEFAULT_SW_BATCH_SIZE
    overlap: float = DEFAULT_OVERLAP
    mode: str = "constant"
    inferer: Callable | None = None  # a trusted bundle's own inferer; None means sliding_window_inference
    label_name: str = "foreground"
    metadata: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: Any = None  # a medtransfer.training.PrecisionChoice (autocast per window); None: fp32

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """Logits for a (1, C, *spatial) image, by sliding windows (bounded memory for any volume size)."""
        image = image.to(self.device)
        inferer = self.inferer or (
            lambda inputs, network: sliding_window_inference(
                inputs, self.roi_size, self.sw_batch_size, network, overlap=self.overlap, mode=self.mode
            )
        )
        if self.precision is not None:
            from medtransfer.training.precision import PrecisionInferer

            inferer = PrecisionInferer(inferer, self.precision)
        with torch.no_grad():
            return inferer(image, self.network)


# --- reading a bundle as data ------------------------------------------------------------------------------


def inference_config_path(bundle: Path) -> Path:
    try:
        return registry.inference_config(bundle)
    except registry.RegistryError as error:
        raise BundleError(str(error)) from None


def read_config_file(path: Path) -> dict:
    """Parse a JSON / YAML config as plain data (YAML's safe loader: no Python object tags)."""
    try:
        text = path.read_text()
        content = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise BundleError(f"{path}: not a readable config ({type(error).__name__}: {error})") from None
    if not isinstance(content, dict):
        raise BundleError(f"{path}: expected a mapping of config keys, got {type(content).__name__}")
    return content


def read_metadata(bundle: Path) -> dict:
    path = bundle / "configs" / "metadata.json"
    if not path.is_file():
        raise BundleError(f"{bundle}: not a MONAI bundle (no configs/metadata.json)")
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise BundleError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise BundleError(f"{path}: expected a JSON object")
    return metadata


def _lookup(config: Mapping, key: str) -> Any:
    """A config item by id (``a::b::0``, or the legacy ``a#b#0``), as MONAI addresses it."""
    item: Any = config
    for part in key.replace("#", "::").split("::"):
        if isinstance(item, Mapping) and part in item:
            item = item[part]
        elif isinstance(item, list) and part.isdigit() and int(part) < len(item):
            item = item[int(part)]
        else:
            raise KeyError(key)
    return item


class _Literals:
    """Resolves config values that are plain data, collecting a description of everything that is not."""

    def __init__(self, config: Mapping) -> None:
        self.config = config
        self.problems: list[str] = []

    def value(self, value: Any, where: str, seen: tuple[str, ...] = ()) -> Any:
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, str):
            if value.startswith("$"):
                self.problems.append(f"{where} = {value!r} (a Python expression)")
                return None
            if value.startswith("%"):
                self.problems.append(f"{where} = {value!r} (a macro copying other config text)")
                return None
            if value.startswith("@"):
                key = value[1:]
                if key in seen:
                    self.problems.append(f"{where} = {value!r} (a circular reference)")
                    return None
                try:
                    target = _lookup(self.config, key)
                except KeyError:
                    self.problems.append(f"{where} = {value!r} (a reference to a missing key)")
                    return None
                return self.value(target, f"{where} -> {key}", (*seen, key))
            return value
        if isinstance(value, list):
            return [self.value(v, f"{where}[{i}]", seen) for i, v in enumerate(value)]
        if isinstance(value, dict):
            if "_target_" in value:
                self.problems.append(f"{where} = instantiates {value['_target_']!r}")
                return None
            special = [k for k in value if str(k).startswith("_")]
            if special:
                self.problems.append(f"{where} has config directives {special}")
                return None
            return {k: self.value(v, f"{where}::{k}", seen) for k, v in value.items()}
        self.problems.append(f"{where} = {value!r} (unsupported value type {type(value).__name__})")
        return None

    def component(
        self, config: Mapping, key: str, targets, allowed_args=None, required: bool = True
    ) -> tuple[str | None, dict]:
        """The ``_target_`` and literal keyword arguments of a top-level component, or problems recorded."""
        if key not in config:
            if required:
                self.problems.append(f"{key}: missing (the safe loader needs it)")
            return None, {}
        item = config[key]
        if isinstance(item, str) and item.startswith("@"):  # e.g. "inferer: @validate#inferer"
            try:
                item = _lookup(config, item[1:])
            except KeyError:
                self.problems.append(f"{key} = {config[key]!r} (a reference to a missing key)")
                return None, {}
        if not isinstance(item, Mapping) or "_target_" not in item:
            if isinstance(item, str) and item.startswith("$"):
                self.problems.append(f"{key} = {item!r} (a Python expression)")
            else:
                shown = item if isinstance(item, str) else f"a {type(item).__name__}"
                self.problems.append(f"{key} = {shown!r} (not a declarative component with a _target_)")
            return None, {}
        target = item["_target_"]
        if not isinstance(target, str) or target not in targets:
            self.problems.append(f"{key}::_target_ = {target!r} (not allow-listed)")
            return None, {}
        arguments = {}
        for name, raw in item.items():
            if name == "_target_":
                continue
            if str(name).startswith("_"):
                self.problems.append(f"{key}::{name} = {raw!r} (config directive)")
                continue
            if allowed_args is not None and name not in allowed_args:
                self.problems.append(f"{key}::{name} (argument not allow-listed for {target})")
                continue
            arguments[name] = self.value(raw, f"{key}::{name}")
        return target, arguments


@dataclass
class SafeSpec:
    """What safe mode takes from a bundle's inference config: all plain data, nothing executed yet."""

    network_target: str
    network_args: dict
    spatial_dims: int
    target_spacing: list[float] | None
    roi_size: list[int]
    sw_batch_size: int
    overlap: float
    mode: str
    channels: int = 1  # input channels the preprocessing checks and the network takes (grey 1, RGB 3, ...)
    # an ensemble (network_target standalone.ENSEMBLE): each member's (_target_, literal arguments);
    # network_args are then the first member's
    members: list[tuple[str, dict]] | None = None


def _refusal(bundle: Path, config_path: Path, problems: list[str]) -> UntrustedBundleError:
    listing = "\n".join(f"  - {p}" for p in problems)
    return UntrustedBundleError(
        f"{bundle}: refused to load {config_path.relative_to(bundle)} in safe mode. medtransfer runs only the "
        f"allow-listed networks (medtransfer.networks.build_dynunet / build_resnet_unet, MONAI DynUNet / "
        f"FlexibleUNet), its standard preprocessing (medtransfer.data.eval_transforms) and SlidingWindowInferer, "
        f"with literal arguments. This bundle wants to execute:\n{listing}\n"
        f"If you trust the bundle's author and have read its configs, rerun with --trusted (trusted=True), which "
        f"lets MONAI's ConfigWorkflow evaluate them."
    )


def _is_compose(item) -> bool:
    return isinstance(item, Mapping) and item.get("_target_") in ("Compose", standalone.COMPOSE)


def _standard_chain(config: Mapping, spatial_dims, literals: _Literals) -> dict:
    """A MONAI Compose preprocessing is accepted only as exactly the standard chain for its dims and spacing."""
    preprocessing = config["preprocessing"]
    spacing = standalone.spacing_in(preprocessing)
    if spatial_dims not in (2, 3) or not (spacing is None or (
            isinstance(spacing, list) and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in spacing))):
        literals.problems.append(f"preprocessing: a Compose for spatial_dims {spatial_dims!r} / spacing {spacing!r}")
        return {"with_label": False}
    check = next((step for step in preprocessing.get("transforms") or []
                  if isinstance(step, Mapping) and step.get("_target_") == "scripts.checks.ValidateCased"), {})
    channels = check.get("channels", 1)
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        literals.problems.append(f"preprocessing: ValidateCased channels = {channels!r} (a positive integer)")
        return {"with_label": False}
    expected = standalone.preprocessing_def(spatial_dims, spacing, channels)
    if preprocessing != expected:
        steps = preprocessing.get("transforms")
        steps = steps if isinstance(steps, list) else []
        wanted = expected["transforms"]
        first = next((i for i in range(max(len(steps), len(wanted)))
                      if i >= len(steps) or i >= len(wanted) or steps[i] != wanted[i]), None)
        if first is None:
            literals.problems.append("preprocessing: a Compose with other settings than medtransfer's standard chain")
        else:
            shown = steps[first] if first < len(steps) else "(missing)"
            literals.problems.append(
                f"preprocessing::transforms[{first}] = {shown!r}: a Compose other than medtransfer's standard chain "
                f"(standalone.preprocessing_def), which expects "
                f"{wanted[first] if first < len(wanted) else '(nothing)'!r}")
        return {"with_label": False}
    return {"dimensions": spatial_dims, "target_spacing": spacing, "with_label": False, "channels": channels}


def _learned_postprocess(metadata: Mapping | None) -> dict | None:
    """The post-processing an exported bundle's metadata states (``clinical.postprocessing``), as step arguments."""
    from medtransfer.inference.model_info import CLINICAL_KEY
    from medtransfer.inference.postprocess import check_postprocessing

    clinical = (metadata or {}).get(CLINICAL_KEY) or {}
    spec = clinical.get("postprocessing") if isinstance(clinical, Mapping) else None
    try:
        return check_postprocessing({k: v for k, v in spec.items() if k in ("method", "min_size")}
                                    if isinstance(spec, Mapping) else None)
    except ValueError:
        return None  # a bad entry: the chain comparison then fails and names the step


def _source_architecture(target: str | None, arguments: dict, where: str, literals: _Literals) -> None:
    """A source architecture's arguments must pass the same allow-list its fine-tuning did."""
    name = (target or "").rsplit(".", 1)[-1]
    # (DynUNet is medtransfer's own family: any literal arguments, as before)
    if target in NETWORK_TARGETS and name in standalone.SOURCE_ARCHITECTURES and name != "DynUNet":
        try:
            check_architecture({"name": name, **arguments}, where)
        except NetworkSpecError as error:
            literals.problems.append(str(error))


def _network(config: Mapping, literals: _Literals) -> tuple[str | None, dict, list[tuple[str, dict]] | None]:
    """network_def's target and literal arguments; an ensemble's members each checked like a single network."""
    definition = config.get("network_def")
    if not (isinstance(definition, Mapping) and definition.get("_target_") == standalone.ENSEMBLE):
        target, arguments = literals.component(config, "network_def", NETWORK_TARGETS)
        _source_architecture(target, arguments, "network_def", literals)
        return target, arguments, None
    members = definition.get("members")
    extra = sorted(set(definition) - {"_target_", "members"})
    if extra:
        literals.problems.append(f"network_def has arguments other than members: {extra}")
    if not isinstance(members, list) or not members:
        literals.problems.append("network_def::members: expected a non-empty list of network definitions")
        return standalone.ENSEMBLE, {}, []
    specs = []
    for index, member in enumerate(members):
        where = f"network_def::members::{index}"
        target, arguments = literals.component({where: member}, where, NETWORK_TARGETS)
        _source_architecture(target, arguments, where, literals)
        specs.append((target, arguments))
    layouts = {(a.get("spatial_dims"), a.get("in_channels")) for _, a in specs}
    if len(layouts) > 1:
        literals.problems.append(f"network_def::members disagree on (spatial_dims, in_channels): {sorted(layouts, key=str)}")
    return standalone.ENSEMBLE, dict(specs[0][1]), specs


def safe_spec(bundle: Path, config: Mapping, config_path: Path, metadata: Mapping | None = None) -> SafeSpec:
    """Check ``config`` against the allow-list and return its literal settings; raise UntrustedBundleError."""
    literals = _Literals(config)
    network_target, network_args, members = _network(config, literals)
    if _is_compose(config.get("preprocessing")):
        pre_args = _standard_chain(config, network_args.get("spatial_dims"), literals)
    else:
        _, pre_args = literals.component(config, "preprocessing", PREPROCESSING_TARGETS, PREPROCESSING_ARGS)
    _, inferer_args = literals.component(config, "inferer", INFERER_TARGETS, INFERER_ARGS, required=False)
    if "postprocessing" in config:
        post = config["postprocessing"]
        target = post.get("_target_") if isinstance(post, Mapping) else post
        if _is_compose(post):
            learned = _learned_postprocess(metadata)
            if post != standalone.postprocessing_def(learned, pre_args.get("channels", 1)):
                literals.problems.append("postprocessing: a Compose other than medtransfer's standard chain "
                                         "(standalone.postprocessing_def)"
                                         + (f" with the metadata's post-processing {learned}" if learned else ""))
        elif target not in POSTPROCESSING_TARGETS:
            literals.problems.append(
                f"postprocessing = {target!r} (segment only supports medtransfer's standard postprocessing: "
                f"{POSTPROCESSING_TARGETS[0]})"
            )
    for target, arguments in members or [(network_target, network_args)]:
        if "FlexibleUNet" in (target or "") or target == "FlexUNet":
            if arguments.get("pretrained"):
                literals.problems.append("network_def::pretrained = true (downloads weights when built)")
    if pre_args.get("with_label", True) is not False:
        literals.problems.append("preprocessing::with_label must be false for inference")
    if literals.problems:
        raise _refusal(bundle, config_path, literals.problems)

    spatial_dims = network_args.get("spatial_dims", pre_args.get("dimensions"))
    if spatial_dims not in (2, 3) or pre_args.get("dimensions") not in (None, spatial_dims):
        raise BundleError(
            f"{config_path}: network_def spatial_dims ({spatial_dims}) and preprocessing dimensions "
            f"({pre_args.get('dimensions')}) must agree and be 2 or 3"
        )
    roi_size = inferer_args.get("roi_size") or config.get("patch_size")
    if roi_size is None and metadata:
        shape = metadata.get("network_data_format", {}).get("inputs", {}).get("image", {}).get("spatial_shape")
        roi_size = shape if shape and all(isinstance(s, int) for s in shape) else None
    if not isinstance(roi_size, list) or len(roi_size) != spatial_dims or not all(isinstance(s, int) for s in roi_size):
        raise BundleError(
            f"{config_path}: the sliding-window size must be a list of {spatial_dims} integers "
            f"(inferer roi_size or top-level patch_size), got {roi_size!r}"
        )
    channels = pre_args.get("channels", 1)
    network_channels = network_args.get("in_channels", channels)
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1 or channels != network_channels:
        raise BundleError(
            f"{config_path}: the preprocessing checks for {channels!r} input channel(s) and network_def takes "
            f"{network_channels!r}; they must be the same positive integer"
        )
    spacing = pre_args.get("target_spacing")
    if spacing is not None and (
        not isinstance(spacing, list) or len(spacing) != spatial_dims
        or not all(isinstance(s, (int, float)) and s > 0 for s in spacing)
    ):
        raise BundleError(
            f"{config_path}: target_spacing must be null or {spatial_dims} positive numbers, got {spacing!r}"
        )
    return SafeSpec(
        network_target=network_target,
        network_args=network_args,
        spatial_dims=int(spatial_dims),
        target_spacing=[float(s) for s in spacing] if spacing else None,
        roi_size=[int(s) for s in roi_size],
        sw_batch_size=int(inferer_args.get("sw_batch_size", DEFAULT_SW_BATCH_SIZE)),
        overlap=float(inferer_args.get("overlap", DEFAULT_OVERLAP)),
        mode=str(inferer_args.get("mode", "constant")),
        channels=channels,
        members=members,
    )


def _build_one(target: str, arguments: dict) -> torch.nn.Module:
    builder = NETWORK_TARGETS[target]
    arguments = dict(arguments)
    if isinstance(builder, type) and issubclass(builder, FlexibleUNet):
        arguments["pretrained"] = False
    try:
        return builder(**arguments)
    except (TypeError, ValueError) as error:
        raise BundleError(f"network_def: {target}({arguments}) failed: {error}") from None


def build_safe_network(spec: SafeSpec) -> torch.nn.Module:
    if spec.members is not None:
        return ProbabilityEnsemble([_build_one(target, arguments) for target, arguments in spec.members])
    return _build_one(spec.network_target, spec.network_args)


def importable_network_def(spec: SafeSpec) -> dict:
    """The checked network_def as a config MONAI's parser builds without the bundle's scripts/ on sys.path
    (medtransfer's copies of that code): what `bundle verify` feeds to MONAI's verify_net_in_out."""
    def one(target: str, arguments: dict) -> dict:
        arguments = dict(arguments)
        if isinstance(NETWORK_TARGETS[target], type) and issubclass(NETWORK_TARGETS[target], FlexibleUNet):
            arguments["pretrained"] = False
        return {"_target_": IMPORTABLE_TARGETS.get(target, target), **arguments}

    if spec.members is not None:
        return {"_target_": IMPORTABLE_TARGETS[standalone.ENSEMBLE], "members": [one(t, a) for t, a in spec.members]}
    return one(spec.network_target, spec.network_args)


def safe_inferer(spec: SafeSpec) -> Callable | None:
    """An ensemble's inferer (sliding windows per member, probabilities averaged); None: SegmentationModel's own."""
    if spec.members is None:
        return None
    return EnsembleSlidingWindowInferer(roi_size=spec.roi_size, sw_batch_size=spec.sw_batch_size,
                                        overlap=spec.overlap, mode=spec.mode)


# --- weights ------------------------------------------------------------------------------------------------


def check_weights_checksum(bundle: Path, metadata: Mapping, relative: str = WEIGHTS_PATH, required: bool = True) -> str:
    """Compare a bundle file's sha256 with the one its metadata lists; return the digest."""
    path = bundle / relative
    if not path.is_file():
        raise BundleError(f"{bundle}: {relative} is missing")
    digest = sha256_of(path)
    listed = (metadata.get(CHECKSUM_KEY) or {}).get(relative)
    if listed is None:
        message = (
            f"{bundle}: configs/metadata.json lists no sha256 for {relative} ({CHECKSUM_KEY}), so the file's "
            f"integrity cannot be checked"
        )
        if required:
            raise BundleError(message + "; re-export the bundle with `medtransfer export`, or pass --trusted")
        logger.warning(message)
    elif listed.lower() != digest:
        raise BundleError(
            f"{path}: sha256 {digest} does not match {listed} listed in configs/metadata.json: the file was changed "
            f"or damaged after export; refusing to use it"
        )
    return digest


def check_bundle_weights(bundle_root: str | Path, checkpoint: str | Path | None = None) -> None:
    """For ``initialize`` in exported inference configs: the bundle's own weights must match their sha256.

    A ``--checkpoint`` override pointing elsewhere is the user's choice and is only logged.
    """
    bundle = Path(bundle_root)
    own = (bundle / WEIGHTS_PATH).resolve()
    if checkpoint is not None and Path(checkpoint).resolve() != own:
        logger.warning("using weights %s instead of the bundle's %s; no checksum to compare", checkpoint, own)
        return
    check_weights_checksum(bundle, read_metadata(bundle))


# --- public entry points ----------------------------------------------------------------------------------


def _eval_preprocessing(spatial_dims: int, target_spacing, channels: int = 1) -> Compose:
    from medtransfer.data import eval_transforms

    return eval_transforms(spatial_dims, target_spacing=target_spacing, with_label=False, channels=channels)


def _label_name(metadata: Mapping) -> str:
    channels = (
        metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def", {}) or {}
    )
    return str(channels.get("1", "foreground"))


def _load_into(network: torch.nn.Module, path: Path, device: torch.device) -> torch.nn.Module:
    try:
        load_weights(network, path)
    except WeightsError as error:
        raise BundleError(str(error)) from None
    return network.to(device).eval()


def load_bundle(bundle: str | Path, trusted: bool = False, device: str | torch.device = "cpu") -> SegmentationModel:
    """A SegmentationModel from a bundle folder: safe by default, ConfigWorkflow when ``trusted``."""
    bundle = Path(bundle)
    device = torch.device(device)
    metadata = read_metadata(bundle)
    config_path = inference_config_path(bundle)
    weights = bundle / WEIGHTS_PATH
    check_weights_checksum(bundle, metadata, required=not trusted)
    try:
        read_state_dict(weights)  # weights_only: pickled objects are refused before the network is built
    except WeightsError as error:
        raise BundleError(str(error)) from None
    if not trusted:
        spec = safe_spec(bundle, read_config_file(config_path), config_path, metadata)
        network = _load_into(build_safe_network(spec), weights, device)
        return SegmentationModel(
            network=network,
            spatial_dims=spec.spatial_dims,
            preprocessing=_eval_preprocessing(spec.spatial_dims, spec.target_spacing, spec.channels),
            roi_size=spec.roi_size,
            sw_batch_size=spec.sw_batch_size,
            overlap=spec.overlap,
            mode=spec.mode,
            inferer=safe_inferer(spec),
            source=f"bundle {bundle}",
            label_name=_label_name(metadata),
            metadata=metadata,
            device=device,
        )
    return _load_trusted(bundle, config_path, metadata, weights, device)


def _load_trusted(bundle: Path, config_path: Path, metadata: dict, weights: Path, device) -> SegmentationModel:
    from monai.bundle import ConfigWorkflow

    logger.warning("%s: trusted mode: evaluating the bundle's configs with MONAI ConfigWorkflow", bundle)
    if str(bundle.resolve()) not in sys.path:  # custom code in <bundle>/scripts/ (MONAI does this in initialize)
        sys.path.insert(0, str(bundle.resolve()))
    workflow = ConfigWorkflow(
        config_file=str(config_path),
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        bundle_root=str(bundle),
        device=str(device),
    )
    parser = workflow.parser
    network = _load_into(parser.get_parsed_content("network_def"), weights, device)
    preprocessing = parser.get_parsed_content("preprocessing")
    if not isinstance(preprocessing, Compose):
        preprocessing = Compose(preprocessing if isinstance(preprocessing, list) else [preprocessing])
    inferer = parser.get_parsed_content("inferer") if "inferer" in parser else None
    shape = metadata.get("network_data_format", {}).get("inputs", {}).get("image", {}).get("spatial_shape", [])
    spatial_dims = int(parser.get("spatial_dims") or len(shape) or 3)
    roi_size = list(getattr(inferer, "roi_size", None) or parser.get("patch_size") or [])
    return SegmentationModel(
        network=network,
        spatial_dims=spatial_dims,
        preprocessing=preprocessing,
        roi_size=[int(s) for s in roi_size],
        inferer=inferer,
        source=f"bundle {bundle} (trusted)",
        label_name=_label_name(metadata),
        metadata=metadata,
        device=device,
    )


def run_target_spacing(config: Mapping, manifest: str | Path | None = None) -> tuple[list[float] | None, dict]:
    """The training data's target_spacing and the manifest content (found by name, or the given path)."""
    from medtransfer.data.manifest import ManifestError, read_manifest_file
    from medtransfer.data.open import find_manifest

    name = manifest or config.get("data_manifest")
    try:
        content = read_manifest_file(find_manifest(name))
    except ManifestError as error:
        raise BundleError(
            f"cannot find the run's data manifest {str(name)!r} ({error}); it says at which spacing the model was "
            f"trained: pass its path (--manifest)"
        ) from None
    return content.get("target_spacing"), content


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", manifest: str | Path | None = None
) -> SegmentationModel:
    """A SegmentationModel from a finished training run folder (``run.json`` + ``model.pt``)."""
    run = Path(run_dir)
    if run.is_file() and run.name.endswith(".pt"):
        run = run.parent
    if not RunFolder(run).record_path.is_file():
        raise BundleError(f"{run}: neither a MONAI bundle (configs/metadata.json) nor a run folder (run.json)")
    folder = RunFolder(run)
    try:
        record, weights = folder.check_finished("segmentation")
    except RunDirectoryError as error:
        raise BundleError(str(error)) from None
    config = record.get("config") or {}
    device = torch.device(device)
    target_spacing, content = run_target_spacing(config, manifest)
    channels = int(content.get("channels", 1))  # the training manifest's input channels (grey 1, RGB 3, ...)
    try:
        if config.get("source_network"):  # fine-tuned in the source's own architecture (auto reads the source file)
            from medtransfer.transfer.source_network import build_run_network

            network = build_run_network(int(config["spatial_dims"]), source_network=config["source_network"],
                                        source_checkpoint=config.get("source_checkpoint"))
        else:
            network = folder.build_network(in_channels=channels)
    except NetworkConfigError as error:
        raise BundleError(f"{run}/run.json: {error}") from None
    network = _load_into(network, weights, device)
    dims = int(config["spatial_dims"])
    label = str((content.get("label_meaning") or {}).get("1", "foreground")).split(" (")[0].strip() or "foreground"
    return SegmentationModel(
        network=network,
        spatial_dims=dims,
        preprocessing=_eval_preprocessing(dims, target_spacing, channels),
        roi_size=[int(s) for s in config["patch_size"]],
        source=f"run {run}",
        label_name=label,
        metadata=_run_clinical(record, content, run, weights, label),
        device=device,
    )


def _run_clinical(record: Mapping, manifest: Mapping, run: Path, weights: Path, label: str) -> dict:
    """The ``clinical`` metadata of a run folder (post-processing, codes, identity), as an export would write it."""
    from medtransfer.inference.model_info import CLINICAL_KEY, clinical_metadata

    config = record.get("config") or {}
    name = f"{config.get('bundle', 'medtransfer')} run {run.name}"
    version = f"run {str(record.get('config_hash', ''))[:12]}"
    try:
        return {CLINICAL_KEY: clinical_metadata(record, manifest, name, version, record.get("model_sha256"), label)}
    except ValueError as error:  # a bad post-processing entry or segment code: name the run folder
        raise BundleError(f"{run}: {error}") from None


# The largest real bundle medtransfer makes is a 3D export with model.pt, model.ts and model.onnx (~130 MiB at the
# default filters); a zip that unpacks to more than a few times that is refused before anything is written.
MAX_UNZIPPED_BYTES = 384 * 2**20
MAX_ZIP_MEMBERS = 10_000


def zip_limits() -> tuple[int, int]:
    """(bytes, members) a bundle zip may unpack to; MEDTRANSFER_MAX_UNZIPPED_MB / MEDTRANSFER_MAX_ZIP_MEMBERS."""
    import os

    try:
        size = int(float(os.environ.get("MEDTRANSFER_MAX_UNZIPPED_MB", MAX_UNZIPPED_BYTES / 2**20)) * 2**20)
        members = int(os.environ.get("MEDTRANSFER_MAX_ZIP_MEMBERS", MAX_ZIP_MEMBERS))
    except ValueError as error:
        raise BundleError(f"MEDTRANSFER_MAX_UNZIPPED_MB / MEDTRANSFER_MAX_ZIP_MEMBERS: not a number ({error})") from None
    return size, members


def _check_zip_members(archive: Path, zipped: zipfile.ZipFile, target: Path) -> None:
    """Before extracting: member count, total uncompressed size (zipfile never inflates a member past its
    declared size), no symlinks, no path outside `target`."""
    import stat

    max_bytes, max_members = zip_limits()
    members = zipped.infolist()
    if len(members) > max_members:
        raise BundleError(f"{archive}: {len(members)} members, more than the {max_members} a bundle may hold "
                          "(MEDTRANSFER_MAX_ZIP_MEMBERS); refusing to unpack")
    total = sum(member.file_size for member in members)
    if total > max_bytes:
        raise BundleError(f"{archive}: unpacks to {total / 2**20:.0f} MiB, more than the {max_bytes / 2**20:.0f} MiB "
                          "allowed (MEDTRANSFER_MAX_UNZIPPED_MB); refusing to unpack (a zip bomb?)")
    root = target.resolve()
    for member in members:
        if stat.S_ISLNK(member.external_attr >> 16):
            raise BundleError(f"{archive}: member {member.filename!r} is a symbolic link; refusing")
        destination = (root / member.filename).resolve()
        if destination != root and root not in destination.parents:
            raise BundleError(f"{archive}: member {member.filename!r} would be written outside the folder; refusing")


def _extract_zip(archive: Path, target: Path) -> Path:
    """Unpack a bundle zip into `target` (a temporary folder the caller removes) after `_check_zip_members`."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            _check_zip_members(archive, zipped, target)
            zipped.extractall(target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as error:
        raise BundleError(f"{archive}: not a readable zip ({type(error).__name__}: {error})") from None
    roots = [p for p in target.iterdir() if p.is_dir()]
    if (target / "configs" / "metadata.json").is_file():
        return target
    if len(roots) == 1 and (roots[0] / "configs" / "metadata.json").is_file():
        return roots[0]
    raise BundleError(f"{archive}: the zip holds no bundle (configs/metadata.json at its top or in one folder)")


def load_model(
    model_or_bundle: str | Path,
    trusted: bool = False,
    device: str | torch.device = "cpu",
    manifest: str | Path | None = None,
) -> SegmentationModel:
    """A bundle folder or zip, a run folder, or a run's model.pt → SegmentationModel."""
    path = Path(model_or_bundle)
    if not path.exists():
        raise BundleError(f"model not found: {path}")
    if path.is_file() and path.suffix == ".zip":  # unpacked, loaded into memory, removed again
        with tempfile.TemporaryDirectory(prefix="medtransfer_bundle_") as folder:
            return load_model(_extract_zip(path, Path(folder)), trusted=trusted, device=device, manifest=manifest)
    if (path / "configs" / "metadata.json").is_file():
        return load_bundle(path, trusted=trusted, device=device)
    return load_run(path, device=device, manifest=manifest)

