"""Checkpoint adapters: a checkpoint file -> tensors keyed by the TARGET network's tensor names.

Transfer strategies copy whole parts (encoder / decoder / head) by name, so every source format is first
translated into the names of `medtransfer.networks.state_tensors(model)` and checked here: each tensor must
have a place in the target, the shapes must agree, and a part is provided whole or not at all. Strategies
can then trust `AdaptedCheckpoint.state` and `available_parts` without knowing where the weights came from.

Files are always read with `torch.load(..., weights_only=True)`: a checkpoint is data from elsewhere, and
unpickling arbitrary objects would run their code. Files holding pickled objects are refused, never
re-read unsafely.

Formats:

- ``medtransfer``: a pretraining output ``{"medtransfer_checkpoint": 1, "state_dict", "trained_parts", ...}``
  or the plain state dict of a fine-tuned `model.pt`.
- ``monai_bundle``: a bundle's `models/model.pt` of a compatible network, plain or ``{"model": state_dict}``,
  optionally with the ``module.`` prefix of DistributedDataParallel.
- ``torchvision_resnet``: an ImageNet ResNet state dict of torchvision, or of timm (same key names for its
  ResNets), into the encoder of `build_resnet_unet(2, ...)`.
- ``nnunet_v2``: an nnU-Net v2 `checkpoint_final.pth` of a `PlainConvUNet`, into a `build_dynunet` network of
  the same topology.

Containers and wrappers are looked through first, whatever the format: the state dict under ``state_dict``,
``model``, ``model_state_dict``, ``network_weights``, ``net`` or ``weights`` (training scripts' dicts with
epochs and optimizers beside it), and the key prefixes ``module.`` (DataParallel/DDP) and ``_orig_mod.``
(torch.compile). Tensors saved on a GPU are read onto the CPU. A TorchScript archive holds code, not only
data: it is recognised and refused unless the caller trusts it (then its ``state_dict()`` is used).
"""

from __future__ import annotations

from medtransfer.errors import MedtransferError

import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from monai.networks.nets import DynUNet, FlexibleUNet
from torch import nn

from medtransfer.networks import PART_NAMES, parts, state_tensors
from medtransfer.networks.parts import FAMILY_CLASSES, Architecture, describe_network, recognise

FORMATS = ("medtransfer", "monai_bundle", "torchvision_resnet", "nnunet_v2")
MEDTRANSFER_CHECKPOINT_VERSION = 1

# Keys every torchvision/timm ResNet state dict has and no U-Net state dict has at its top level.
_TORCHVISION_KEYS = {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight"}
# A plain state dict is a medtransfer fine-tuning output when it holds at least this share of the model's names.
_NAME_MATCH_SHARE = 0.5
_NNUNET_CHECKPOINT_NAME = re.compile(r"checkpoint_(final|best|latest)\.pth")
# How torch's weights-only unpickler refuses a pickled object (naming its class when it can), and its complaints.
_REFUSED_OBJECT = re.compile(
    r"unsupported (?:global: )?GLOBAL (\S+)|Can only (?:create new object|build)|call reduce for unrecognized",
    re.IGNORECASE,
)
_WEIGHTS_ONLY_REASON = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\n|$)", re.S)


# Where training scripts put the state dict, most specific first ("model" is also MONAI's CheckpointSaver's key).
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "network_weights", "net", "weights")
# Wrapper prefixes on every key: DataParallel / DistributedDataParallel, and torch.compile's OptimizedModule.
WRAPPER_PREFIXES = {"module.": "DataParallel/DistributedDataParallel", "_orig_mod.": "torch.compile"}


class CheckpointError(MedtransferError, ValueError):
    """A checkpoint cannot be adapted to the target network; the message names the file and the problem."""


class TorchScriptCheckpointError(CheckpointError):
    """The file is a TorchScript archive: loading it runs its code, so it is refused unless trusted."""


class ArchitectureMismatchError(CheckpointError):
    """No tensor of the file fits the target network; `source` and `target` say what each appears to be."""

    def __init__(self, message: str, source: Architecture, target: Architecture) -> None:
        super().__init__(message)
        self.source = source
        self.target = target


@dataclass
class Unwrapped:
    """A file's tensors with containers and wrapper prefixes removed, and what was removed."""

    state: dict[str, torch.Tensor]
    container: str | None = None  # e.g. "state_dict", "model", "torchscript"
    prefixes: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # other top-level entries of a container

    def notes(self) -> list[str]:
        notes = []
        if self.container == "torchscript":
            notes.append("TorchScript archive loaded as trusted; its state_dict() was used")
        elif self.container:
            ignored = f"; ignored {self.ignored}" if self.ignored else ""
            notes.append(f"used the {self.container!r} entry{ignored}")
        for prefix in self.prefixes:
            notes.append(f"removed the {prefix!r} prefix of {WRAPPER_PREFIXES[prefix]}")
        return notes


@dataclass
class AdaptedCheckpoint:
    """A checkpoint translated into the target network's tensor names, ready for a transfer strategy."""

    path: Path
    format: str
    state: dict[str, torch.Tensor]
    available_parts: list[str]
    meta: dict
    notes: list[str]
    container: str | None = None
    prefixes_removed: list[str] = field(default_factory=list)
    head_replaced: str | None = None  # why the head cannot be loaded (another class count), when it cannot


@dataclass
class _Adapted:
    """What a format adapter hands back before the checks common to all formats."""

    state: dict[str, torch.Tensor]
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    declared_parts: list[str] | None = None  # parts the file says it provides; checked against what it covers


def load_checkpoint(
    path: str | Path, model: nn.Module, format: str = "auto", trusted: bool = False
) -> AdaptedCheckpoint:
    """Read `path` safely and translate it into the tensor names of `model`.

    `format` is one of FORMATS or "auto" (see `detect_format`). `trusted` allows a TorchScript archive (whose
    loading runs its code). Raises CheckpointError, naming the file, when the file cannot be read, holds pickled
    objects, is untrusted TorchScript, or does not fit `model` (ArchitectureMismatchError when nothing fits).
    """
    path = Path(path)
    if format != "auto" and format not in FORMATS:
        raise CheckpointError(f"{path}: unknown checkpoint format {format!r}; use 'auto' or one of {FORMATS}")
    raw = read_checkpoint_file(path, format, trusted)
    try:
        chosen = detect_format(raw, model) if format == "auto" else format
        unwrapped = None
        if not _keeps_its_layout(raw, chosen):
            unwrapped = unwrap(raw)
            raw = unwrapped.state
        adapted = _ADAPTERS[chosen](raw, model)
        from medtransfer.transfer.channels import adapt_input_channels  # grey <-> colour: first convolution

        adapted.state = adapt_input_channels(adapted.state, model, adapted.notes)
        available = _available_parts(adapted.state, model)
        _check_declared_parts(adapted.declared_parts, available)
    except ArchitectureMismatchError as error:
        raise ArchitectureMismatchError(f"{path}: {error}", error.source, error.target) from None
    except CheckpointError as error:
        raise type(error)(f"{path}: {error}") from None
    notes = (unwrapped.notes() if unwrapped else []) + adapted.notes
    head = _head_replaced(adapted.state, model)
    if head:  # the whole head is the network's own: none of the file's head tensors is loaded, even where shapes agree
        notes.append(head)
        target = state_tensors(model)
        agreeing = [n for n in parts(model)["head"] if n in adapted.state and adapted.state[n].shape == target[n].shape]
        for name in agreeing:
            del adapted.state[name]
        if agreeing:
            notes.append(f"left out {len(agreeing)} head tensors whose shapes agree (e.g. {agreeing[:2]}), so that "
                         "the head is replaced whole, not mixed")
    return AdaptedCheckpoint(
        path, chosen, adapted.state, available, adapted.meta, notes,
        container=unwrapped.container if unwrapped else None,
        prefixes_removed=list(unwrapped.prefixes) if unwrapped else [],
        head_replaced=head,
    )


def read_source_state(path: str | Path, trusted: bool = False) -> Unwrapped:
    """The tensors of any checkpoint file with containers and prefixes removed (for inspecting and recognising)."""
    path = Path(path)
    raw = read_checkpoint_file(path, "auto", trusted)
    try:
        if "medtransfer_checkpoint" in raw:
            return Unwrapped(_tensor_dict(raw.get("state_dict"), "state_dict"), "medtransfer checkpoint",
                             ignored=sorted(k for k in raw if k != "state_dict"))
        return unwrap(raw)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None


def unwrap(raw: dict) -> Unwrapped:
    """The state dict inside a training script's container, without DataParallel / torch.compile prefixes."""
    container, ignored, state = raw.get("__container__"), [], raw
    if container == "torchscript":
        state = {k: v for k, v in raw.items() if k != "__container__"}
    elif not _is_tensor_dict(raw):
        for key in CONTAINER_KEYS:
            if _is_tensor_dict(raw.get(key)):
                container, state = key, raw[key]
                ignored = sorted(str(k) for k in raw if k != key)
                break
        else:
            raise CheckpointError(
                f"unrecognised checkpoint: neither a state dict of tensors nor a container holding one under "
                f"{list(CONTAINER_KEYS)} (top-level keys: {_examples(raw, 8)})"
            )
    prefixes = []
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(key.startswith(prefix) for key in state):
                state = {key.removeprefix(prefix): tensor for key, tensor in state.items()}
                prefixes.append(prefix)
                changed = True
    return Unwrapped(dict(state), container, prefixes, ignored)


def detect_format(raw: dict, model: nn.Module | None = None) -> str:
    """The format of a loaded checkpoint, from its structure and key names.

    A plain name-keyed state dict is a medtransfer fine-tuning output when its keys cover the model's names
    substantially; without a model to compare with (or when they do not) it is taken for a MONAI bundle's
    `model.pt` (also when wrapped in MONAI's ``{"model": ...}`` or a DDP prefix). Both adapt by name in the same
    way, so the label only records where the file came from.
    """
    if "medtransfer_checkpoint" in raw:
        return "medtransfer"
    if _is_nnunet(raw):
        return "nnunet_v2"
    unwrapped = unwrap(raw)
    if _TORCHVISION_KEYS <= unwrapped.state.keys():
        return "torchvision_resnet"
    if unwrapped.container == "model" or "module." in unwrapped.prefixes:
        return "monai_bundle"
    if model is not None and _share_of_names(unwrapped.state, model) >= _NAME_MATCH_SHARE:
        # medtransfer fine-tunes DynUNet / ResNet U-Nets by default; a MONAI UNet's (etc.) state dict is a MONAI one
        return "medtransfer" if isinstance(_network(model), (DynUNet, FlexibleUNet)) else "monai_bundle"
    return "monai_bundle"


def _is_nnunet(raw: dict) -> bool:
    weights = raw.get("network_weights")
    return isinstance(weights, dict) and (
        "trainer_name" in raw or any(str(k).startswith("encoder.stages.") for k in weights)
    )


def _keeps_its_layout(raw: dict, chosen: str) -> bool:
    """A medtransfer pretraining output and an nnU-Net checkpoint are read in their own layout."""
    return (chosen == "medtransfer" and "medtransfer_checkpoint" in raw) or chosen == "nnunet_v2"


def _is_tensor_dict(value: object) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


# --- reading -----------------------------------------------------------------------------------------------


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip with constants.pkl and code/ (torch.jit.save), unlike torch.save's zips."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in names) and any(
        "/code/" in name or name.startswith("code/") for name in names
    )


def read_checkpoint_file(path: Path, format: str = "auto", trusted: bool = False) -> dict:
    """The loaded file, or a CheckpointError that tells a refused file from a damaged one.

    A trusted TorchScript archive comes back as its state dict with ``"__container__": "torchscript"``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if is_torchscript(path):
        if not trusted:
            raise TorchScriptCheckpointError(
                f"{path}: refused: it is a TorchScript archive (torch.jit.save), which holds the network's code as "
                "well as its weights, and loading it would run that code. If you trust its source, export its "
                "weights in a trusted environment:\n"
                f"  python -c \"import torch; torch.save(torch.jit.load('{path.name}', map_location='cpu')"
                ".state_dict(), 'state_dict.pt')\"\nand give state_dict.pt instead, or pass --trusted "
                "(bundle key trusted_checkpoint: true) to load it here."
            )
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:
            raise CheckpointError(f"{path}: a TorchScript archive that cannot be loaded ({_reason(error)})") from None
        state = {name: tensor.detach() for name, tensor in scripted.state_dict().items()}
        return {**state, "__container__": "torchscript"}
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # damaged zip: RuntimeError; truncated/empty: EOFError; foreign bytes: KeyError...
        if isinstance(error, pickle.UnpicklingError) and _REFUSED_OBJECT.search(str(error)):
            raise CheckpointError(_refusal(path, error, format)) from None
        raise CheckpointError(f"{path}: corrupted, truncated or not a PyTorch checkpoint ({_reason(error)})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"{path}: expected a dict (a state dict or a checkpoint holding one), got {type(raw).__name__}"
        )
    return raw


_read = read_checkpoint_file


def _refusal(path: Path, error: Exception, format: str) -> str:
    """Why the file is refused, and how to get its tensors out if its source is trusted."""
    named = _REFUSED_OBJECT.search(str(error)).group(1)
    what = f" (e.g. {named})" if named else ""
    message = (
        f"{path}: refused: it holds pickled Python objects{what}, and medtransfer loads checkpoints with "
        "weights_only=True, which refuses pickled objects rather than running their code."
    )
    if format == "nnunet_v2" or _NNUNET_CHECKPOINT_NAME.fullmatch(path.name):
        return message + (
            " nnU-Net v2 checkpoints usually store numpy numbers in their training log. If you trust the file, "
            "extract its weights in a trusted environment:\n"
            f"  python -c \"import torch; c = torch.load('{path.name}', map_location='cpu', weights_only=False); "
            "torch.save({'network_weights': c['network_weights'], 'trainer_name': c['trainer_name']}, "
            "'network_weights.pth')\"\nand give network_weights.pth instead."
        )
    return message + (
        " If you trust its source, re-save its state dict (tensors only) in a trusted environment and give that file."
    )


def _reason(error: Exception) -> str:
    """The gist of a loading error: the weights-only unpickler's own complaint, else the first line."""
    text = str(error).strip()
    if found := _WEIGHTS_ONLY_REASON.search(text):
        return found.group(1).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


# --- checks common to all formats --------------------------------------------------------------------------


def _available_parts(state: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    """The parts of `model` that `state` provides completely, after checking every name and shape.

    A part that is only partly provided is an error: strategies copy parts whole, and half a transferred
    encoder would silently mix pretrained and random layers.
    """
    target = state_tensors(model)
    network = type(_network(model)).__name__
    unknown = [name for name in state if name not in target]
    if len(unknown) == len(state):
        raise _mismatch(f"none of its {len(state)} tensors fits {network}", state, model)
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} of its {len(state)} tensors have no place in {network} (e.g. {_examples(unknown)}) "
            f"while {len(state) - len(unknown)} fit; the network expects e.g. {_examples(target)}"
        )
    # A head of another shape (another number of classes) is normal in transfer: the strategy re-initialises it.
    head = set(parts(model)["head"])
    head_mismatch = {name for name, tensor in state.items() if name in head and tensor.shape != target[name].shape}
    shapes = [
        f"{name}: checkpoint {tuple(tensor.shape)} vs network {tuple(target[name].shape)}"
        for name, tensor in state.items()
        if tensor.shape != target[name].shape and name not in head_mismatch
    ]
    if shapes:
        _check_dimensionality(state, model)
        source, expected = recognise(state), describe_network(model)
        raise CheckpointError(
            f"{len(shapes)} tensors have other shapes than in {network} (another topology: filters, kernel "
            f"sizes, channels or classes): " + "; ".join(shapes[:4])
            + f". The file appears to be {source.summary()}; the target is {expected.summary()}"
        )
    available = []
    for part, names in parts(model).items():
        if part == "head" and head_mismatch:
            continue
        missing = [name for name in names if name not in state]
        if len(missing) == len(names):
            continue
        if missing:
            raise CheckpointError(
                f"it provides only {len(names) - len(missing)} of the {len(names)} tensors of the {part} of "
                f"{network} (missing e.g. {_examples(missing)}); a part is transferred whole or not at all"
            )
        available.append(part)
    return available


def _mismatch(headline: str, state: dict[str, torch.Tensor], model: nn.Module) -> ArchitectureMismatchError:
    """An error that says what the file appears to be, what the target expects, and what would fit."""
    source, target = recognise(state), describe_network(model)
    message = f"{headline}. The file appears to be {source.summary()}; the target is {target.summary()}."
    if source.notes and not source.segmentation:
        sentence = " ".join(source.notes)
        message += f" {sentence[0].upper()}{sentence[1:]}."
    if source.family != target.family and (how := _own_architecture_hint(source)):
        message += f" To fine-tune in the file's own architecture, {how}."
    if source.family == "unknown":
        message += f" It holds e.g. {_examples(state)}; the network expects e.g. {_examples(state_tensors(model))}."
    return ArchitectureMismatchError(message, source, target)


def _own_architecture_hint(source: Architecture) -> str | None:
    if source.family == "monai_unet":
        return "set source_network: auto (read from the tensors)"
    if source.family == "dynunet":
        return f"build medtransfer's DynUNet with filters {source.widths}"
    if source.family == "resnet_unet":
        return "build medtransfer's ResNet U-Net (build_resnet_unet) with the file's backbone"
    if source.family in FAMILY_CLASSES:
        return f"set source_network: {{name: {FAMILY_CLASSES[source.family]}, ...}} with its arguments"
    return None


def _head_replaced(state: dict[str, torch.Tensor], model: nn.Module) -> str | None:
    """A sentence for the transfer report when the file's head has another class count than the network's."""
    target = state_tensors(model)
    head = parts(model)["head"]
    differing = [n for n in head if n in state and tuple(state[n].shape) != tuple(target[n].shape)]
    if not differing:
        return None
    source_classes, target_classes = recognise(state).out_channels, describe_network(model).out_channels
    classes = (f" ({source_classes} output channels in the file, {target_classes} in the network)"
               if source_classes and target_classes and source_classes != target_classes else "")
    return (f"head replaced: {len(differing)} head tensors have other shapes{classes}; the network's own binary "
            "head is used (re-initialised with the run's seed), never the file's")


def _check_dimensionality(state: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Name the usual cause of many shape mismatches: a 2D checkpoint for a 3D network, or the reverse."""
    conv_ranks = {tensor.ndim for name, tensor in state.items() if name.endswith("weight") and tensor.ndim in (4, 5)}
    target = _spatial_dims(model)
    if len(conv_ranks) == 1 and (found := conv_ranks.pop() - 2) != target:
        raise CheckpointError(
            f"it holds {found}D convolution weights but the network is {target}D: a {found}D checkpoint cannot be "
            f"transferred into a {target}D network"
        )


def _check_declared_parts(declared: list[str] | None, available: list[str]) -> None:
    # a declared head may be unavailable only because its shape differs (re-initialised by the strategy)
    if declared is not None and not (set(available) <= set(declared) and set(declared) - set(available) <= {"head"}):
        raise CheckpointError(f"it declares trained_parts {declared} but provides tensors for {available}")


# --- medtransfer and MONAI bundles: keys are already the network's names ------------------------------------


def _adapt_medtransfer(raw: dict, model: nn.Module) -> _Adapted:
    """A pretraining output (only its trained parts) or a fine-tuned model's full state dict."""
    if "medtransfer_checkpoint" not in raw:
        return _by_name(_tensor_dict(raw, "medtransfer state dict"), model)
    if raw["medtransfer_checkpoint"] != MEDTRANSFER_CHECKPOINT_VERSION:
        raise CheckpointError(
            f"medtransfer checkpoint version {raw['medtransfer_checkpoint']!r} is not supported "
            f"(this medtransfer reads version {MEDTRANSFER_CHECKPOINT_VERSION})"
        )
    trained = list(raw.get("trained_parts") or [])
    if not trained or any(part not in PART_NAMES for part in trained):
        raise CheckpointError(f"trained_parts must list some of {PART_NAMES}, got {raw.get('trained_parts')!r}")
    network = raw.get("network") or {}
    _check_network_description(network, model)
    adapted = _by_name(_tensor_dict(raw.get("state_dict"), "state_dict"), model)
    adapted.meta = {"objective": raw.get("objective"), "epoch": raw.get("epoch"), "network": network}
    adapted.declared_parts = trained
    return adapted


def _check_network_description(network: dict, model: nn.Module) -> None:
    """A pretraining output describes its network; a different family or dimensionality cannot fit."""
    family = {DynUNet: "dynunet", FlexibleUNet: "resnet_unet"}.get(type(_network(model)))
    if "family" in network and family is not None and network["family"] != family:
        raise CheckpointError(f"it was pretrained for a {network['family']} network, the target is a {family}")
    if "spatial_dims" in network and network["spatial_dims"] != _spatial_dims(model):
        raise CheckpointError(
            f"it was pretrained for a {network['spatial_dims']}D network, the target is {_spatial_dims(model)}D"
        )


def _adapt_monai_bundle(raw: dict, model: nn.Module) -> _Adapted:
    """A bundle's `model.pt`: a state dict, or `{"model": state_dict, ...}` as MONAI's checkpoint saver writes."""
    if isinstance(raw.get("model"), dict):
        others = sorted(key for key in raw if key != "model")
        adapted = _by_name(_tensor_dict(raw["model"], "bundle model"), model)
        if others:
            adapted.notes.insert(0, f"used the 'model' entry; ignored {others}")
        return adapted
    return _by_name(_tensor_dict(raw, "bundle state dict"), model)


def _by_name(source: dict[str, torch.Tensor], model: nn.Module) -> _Adapted:
    """Keys map to the target by name, after removing a DDP prefix and the aliases a state dict repeats."""
    notes = []
    if all(key.startswith("module.") for key in source):
        source = {key.removeprefix("module."): tensor for key, tensor in source.items()}
        notes.append("removed the 'module.' prefix of DistributedDataParallel")
    aliases = set(_network(model).state_dict()) - set(state_tensors(model))
    dropped = [key for key in source if key in aliases]
    if dropped:
        roots = sorted({key.split(".", 1)[0] for key in dropped})
        notes.append(
            f"dropped {len(dropped)} alias keys ({', '.join(r + '.*' for r in roots)}) that repeat tensors stored "
            "under their own names"
        )
    return _Adapted({key: tensor for key, tensor in source.items() if key not in aliases}, notes)


# --- torchvision / timm ResNet -----------------------------------------------------------------------------


def _adapt_torchvision(raw: dict, model: nn.Module) -> _Adapted:
    """ImageNet ResNet weights into the encoder of a 2D ResNet-encoder U-Net (MONAI FlexibleUNet).

    MONAI's ResNet encoder uses torchvision's names under `encoder.` (conv1, bn1, layer1..4, downsample.0/1),
    so keys map by prefix; only the classifier and parameter-free differences need handling.
    """
    source = _tensor_dict(raw, "torchvision ResNet state dict")
    network = _network(model)
    if not isinstance(network, FlexibleUNet):
        raise CheckpointError(
            f"torchvision ResNet weights go into the encoder of a ResNet-encoder U-Net (build_resnet_unet); "
            f"{type(network).__name__} has no such encoder (it expects e.g. {_examples(state_tensors(model))})"
        )
    if "conv1.weight" not in source:
        raise CheckpointError(f"not a torchvision ResNet state dict: no conv1.weight (keys e.g. {_examples(source)})")
    if source["conv1.weight"].ndim != 4:
        raise CheckpointError(
            f"conv1.weight has shape {tuple(source['conv1.weight'].shape)}: torchvision ResNet weights are 2D"
        )
    if _spatial_dims(model) != 2:
        raise CheckpointError(
            f"2D ImageNet weights cannot be put into a {_spatial_dims(model)}D network; "
            "use build_resnet_unet(2, ...) or 3D weights in medtransfer or monai_bundle format"
        )
    target = state_tensors(model)
    notes = []
    classifier = [key for key in source if key.startswith("fc.")]
    if classifier:
        notes.append(f"ImageNet classifier dropped ({', '.join(classifier)})")
    state = {f"encoder.{key}": tensor for key, tensor in source.items() if not key.startswith("fc.")}
    state["encoder.conv1.weight"] = _first_conv(state["encoder.conv1.weight"], target["encoder.conv1.weight"], notes)
    _drop_projection_shortcuts(state, target, notes)
    _add_missing_batch_counts(state, target, notes)
    return _Adapted(state, notes)


def _first_conv(weight: torch.Tensor, target: torch.Tensor, notes: list[str]) -> torch.Tensor:
    """Fit the RGB filters of the first convolution to the target's input channels.

    For one channel the filters are summed over R, G, B, which is exactly what the ImageNet network computes for
    a grey image repeated as R = G = B (intensity normalisation is the data pipeline's concern).
    """
    have, want = weight.shape[1], target.shape[1]
    if have == want:
        return weight
    if want == 1:
        notes.append(f"conv1 summed over {have} RGB channels to take 1 input channel")
        return weight.sum(dim=1, keepdim=True)
    raise CheckpointError(
        f"conv1 has {have} input channels and the network {want}: only 1 (summed) or {have} (copied) can be adapted"
    )


def _drop_projection_shortcuts(state: dict, target: dict, notes: list[str]) -> None:
    """MONAI's resnet18/34 use parameter-free (type A) shortcuts where torchvision has 1x1 projections.

    Their tensors have no place in the target, so they are dropped; the blocks then add an average-pooled,
    zero-padded identity instead of ImageNet's learned projection, which the note makes visible.
    """
    shortcuts = [key for key in state if ".downsample." in key and key not in target]
    for key in shortcuts:
        del state[key]
    if shortcuts:
        blocks = sorted({key.removeprefix("encoder.").split(".downsample.")[0] for key in shortcuts})
        notes.append(
            f"dropped {len(shortcuts)} projection-shortcut tensors of {', '.join(blocks)}: the target's blocks use "
            "parameter-free shortcuts (average pooling and zero padding) instead"
        )


def _add_missing_batch_counts(state: dict, target: dict, notes: list[str]) -> None:
    """Older torchvision files predate BatchNorm's `num_batches_tracked`; torch itself fills it with 0."""
    added = [
        name
        for name in target
        if name.endswith(".num_batches_tracked")
        and name not in state
        and name.removesuffix("num_batches_tracked") + "running_mean" in state
    ]
    for name in added:
        state[name] = torch.zeros_like(target[name])
    if added:
        notes.append(
            f"{len(added)} BatchNorm num_batches_tracked counters missing from the file: set to 0, as torch does"
        )


# --- nnU-Net v2 PlainConvUNet ------------------------------------------------------------------------------

_NNUNET_ENCODER = re.compile(r"encoder\.stages\.(\d+)\.0\.convs\.(\d+)\.(conv|norm)\.(\w+)")
_NNUNET_DECODER = re.compile(r"decoder\.stages\.(\d+)\.convs\.(\d+)\.(conv|norm)\.(\w+)")
_NNUNET_TRANSPCONV = re.compile(r"decoder\.transpconvs\.(\d+)\.(weight|bias)")
_NNUNET_SEG_LAYER = re.compile(r"decoder\.seg_layers\.(\d+)\.(weight|bias)")


def _adapt_nnunet(raw: dict, model: nn.Module) -> _Adapted:
    """An nnU-Net v2 PlainConvUNet into a DynUNet of the same topology.

    Encoder stage 0 -> input_block, stages 1..n-2 -> downsamples.{s-1}, the last -> bottleneck; nnU-Net's
    decoder stages and transposed convolutions run deepest first, as DynUNet's `upsamples` do; the last
    segmentation layer is the full-resolution head, the ones before it feed DynUNet's deep-supervision heads.
    """
    network = _network(model)
    if not isinstance(network, DynUNet):
        raise CheckpointError(
            f"nnU-Net weights go into a DynUNet of the same topology (build_dynunet); got {type(network).__name__}"
        )
    source = _tensor_dict(raw.get("network_weights"), "network_weights")
    notes = []
    source = _drop_nnunet_aliases(source, notes)
    stages = _nnunet_stage_count(source)
    names = {key: _nnunet_name(key, stages, network) for key in source}
    unrecognised = [key for key, name in names.items() if name is None]
    if unrecognised:
        raise CheckpointError(
            f"keys that are not those of a PlainConvUNet with 2 convolutions per stage (e.g. "
            f"{_examples(unrecognised)}); residual-encoder and other nnU-Net architectures are not supported"
        )
    _check_nnunet_topology(source, stages, network)
    mapped = {name: source[key] for key, name in names.items() if name}
    _drop_seg_layers_without_head(source, stages, network, notes)
    _drop_biases_the_target_lacks(mapped, state_tensors(model), notes)
    meta = {"trainer_name": raw["trainer_name"]} if isinstance(raw.get("trainer_name"), str) else {}
    return _Adapted(mapped, notes, meta)


def _drop_nnunet_aliases(source: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    """`all_modules.*` repeats each block's conv/norm, `decoder.encoder.*` the encoder the decoder refers to."""
    kept = {k: v for k, v in source.items() if ".all_modules." not in k and not k.startswith("decoder.encoder.")}
    if len(kept) < len(source):
        notes.append(f"dropped {len(source) - len(kept)} nnU-Net alias keys (all_modules.*, decoder.encoder.*)")
    return kept


def _nnunet_stage_count(source: dict[str, torch.Tensor]) -> int:
    stages = {int(m.group(1)) for m in map(_NNUNET_ENCODER.fullmatch, source) if m}
    return max(stages) + 1 if stages else 0


def _check_nnunet_topology(source: dict[str, torch.Tensor], stages: int, network: DynUNet) -> None:
    """Stages, features per stage and dimensionality, compared up front for an error in nnU-Net's terms."""
    first_convs = [source.get(f"encoder.stages.{s}.0.convs.0.conv.weight") for s in range(stages)]
    features = [None if conv is None else conv.shape[0] for conv in first_convs]
    expected = list(network.filters)
    if features != expected:
        raise CheckpointError(
            f"the nnU-Net network has {stages} stages with features {features}, the target DynUNet "
            f"{len(expected)} levels with filters {expected}; the topologies must match"
        )
    dims = first_convs[0].ndim - 2
    if dims != network.spatial_dims:
        raise CheckpointError(f"the nnU-Net network is {dims}D, the target DynUNet {network.spatial_dims}D")


def _nnunet_name(key: str, stages: int, network: DynUNet) -> str | None:
    """The DynUNet name of an nnU-Net key; "" for a key to leave out; None for a key that is not understood."""
    if m := _NNUNET_ENCODER.fullmatch(key):
        stage = int(m.group(1))
        block = "input_block" if stage == 0 else "bottleneck" if stage == stages - 1 else f"downsamples.{stage - 1}"
        return _block_name(block, int(m.group(2)), m.group(3), m.group(4))
    if m := _NNUNET_DECODER.fullmatch(key):
        return _block_name(f"upsamples.{m.group(1)}.conv_block", int(m.group(2)), m.group(3), m.group(4))
    if m := _NNUNET_TRANSPCONV.fullmatch(key):
        return f"upsamples.{m.group(1)}.transp_conv.conv.{m.group(2)}"
    if m := _NNUNET_SEG_LAYER.fullmatch(key):
        head = _seg_layer_head(int(m.group(1)), stages, network)
        return f"{head}.conv.conv.{m.group(2)}" if head else head
    return None


def _block_name(block: str, conv: int, module: str, tensor: str) -> str | None:
    """DynUNet basic blocks hold exactly two conv/norm pairs, named conv1/norm1 and conv2/norm2."""
    if conv > 1:
        return None
    return f"{block}.{module}{conv + 1}.conv.{tensor}" if module == "conv" else f"{block}.{module}{conv + 1}.{tensor}"


def _seg_layer_head(index: int, stages: int, network: DynUNet) -> str | None:
    """seg_layers[-1] is the full-resolution output; seg_layers[-2 - i] sits where deep_supervision_heads[i] does.

    "" for a deep-supervision output the target has no head for; None for an index beyond the decoder.
    """
    from_top = (stages - 2) - index
    if from_top < 0:
        return None
    if from_top == 0:
        return "output_block"
    heads = len(network.deep_supervision_heads) if network.deep_supervision else 0
    return f"deep_supervision_heads.{from_top - 1}" if from_top - 1 < heads else ""


def _drop_seg_layers_without_head(source: dict, stages: int, network: DynUNet, notes: list[str]) -> None:
    indices = {int(m.group(1)) for m in map(_NNUNET_SEG_LAYER.fullmatch, source) if m}
    unused = sorted(index for index in indices if _seg_layer_head(index, stages, network) == "")
    if unused:
        notes.append(
            f"dropped nnU-Net deep-supervision outputs seg_layers {unused}: the target has no head at their resolution"
        )


def _drop_biases_the_target_lacks(mapped: dict, target: dict, notes: list[str]) -> None:
    """nnU-Net convolutions have biases, DynUNet's none; each is a per-channel constant that normalisation removes.

    A block conv's bias feeds instance normalisation directly, which subtracts it exactly; a transposed conv's
    bias passes through the next convolution first, so it is removed exactly except at the zero-padded border.
    """
    dropped = [name for name in mapped if name.endswith(".conv.bias") and name not in target]
    for name in dropped:
        del mapped[name]
    transposed = sum(".transp_conv." in name for name in dropped)
    if len(dropped) > transposed:
        notes.append(
            f"dropped {len(dropped) - transposed} conv biases: DynUNet's convs have none and instance normalisation "
            "removes them"
        )
    if transposed:
        notes.append(
            f"dropped {transposed} transposed-conv biases (DynUNet trans_bias=False): constant offsets that the "
            "next block's normalisation removes except at the image border"
        )


# --- helpers -----------------------------------------------------------------------------------------------

_ADAPTERS = {
    "medtransfer": _adapt_medtransfer,
    "monai_bundle": _adapt_monai_bundle,
    "torchvision_resnet": _adapt_torchvision,
    "nnunet_v2": _adapt_nnunet,
}


def _network(model: nn.Module) -> nn.Module:
    """Look through DDP/DataParallel wrappers, as `medtransfer.networks.parts` does."""
    return model.module if isinstance(getattr(model, "module", None), nn.Module) else model


def _spatial_dims(model: nn.Module) -> int:
    """From the first convolution weight, which works for every network family."""
    return next(tensor.ndim - 2 for tensor in state_tensors(model).values() if tensor.ndim >= 3)


def _tensor_dict(value: object, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(value, dict) or not value or not all(isinstance(v, torch.Tensor) for v in value.values()):
        raise CheckpointError(f"expected {what} to be a non-empty dict of tensors, got {type(value).__name__}")
    return value


def _share_of_names(raw: dict, model: nn.Module) -> float:
    names = state_tensors(model)
    return sum(name in raw for name in names) / len(names)


def _examples(names, count: int = 3) -> list[str]:
    return list(names)[:count]
