"""Layer-wise comparison of two networks on the same images: CKA (+ RSA) per U-Net level.

Three steps, each usable alone:

* :func:`load_network` — a network from a run folder or a checkpoint file, built with
  :func:`medtransfer.networks.build_dynunet`. Parts a file does not provide (an encoder-only checkpoint's
  decoder and head) keep a seeded random initialisation, and the returned :class:`LoadedNetwork` says so.
* :func:`image_batches` — a manifest split through the evaluation transforms, as stackable minibatches.
* :func:`layer_cka` — both networks run on the same minibatches; every level's features are recorded with
  :class:`~medtransfer.analysis.features.FeatureRecorder` and compared with the minibatch CKA estimator
  (:class:`~medtransfer.analysis.cka.MinibatchCKA`), so memory is bounded by one minibatch.

Feature modes (``mode``):

* ``"flatten"`` (default, the published convention): every image is centre padded/cropped to one
  ``spatial_size`` so minibatches stack, and each example's whole feature map is one vector. Minibatches
  of ``batch_size`` examples (at least 4, the unbiased estimator's minimum); a last partial batch is kept when
  it has 4 or more examples, else dropped (and counted in the table).
* ``"pool"``: batch size 1 at each image's own size (padded only to what the U-Net's strides need); each
  map is globally averaged to a C-vector, all n vectors are kept (n × C floats) and compared at the end with
  the unbiased CKA. Translation invariant; with instance normalisation (DynUNet) the pooled vectors vary
  little between images, so prefer ``"flatten"`` for DynUNet.

RSA (optional) is computed on the same representation and the same example pairs as the CKA: in
``"flatten"`` mode on the flattened maps, over the pairs within each minibatch (the RDMs come from the Gram
matrices and row sums the CKA already forms, :func:`~medtransfer.analysis.rsa.rdm_from_gram`); in ``"pool"``
mode on the pooled vectors over all pairs.

Uncertainty: each level's CKA gets a 95 % interval over the images from the delete-one jackknife
(:func:`~medtransfer.analysis.cka.jackknife_minibatch_cka`: each image left out of its minibatch in turn,
the stored Gram matrices re-indexed; why not a bootstrap with replacement: see there). The replicates are
kept in the rows (``cka_jackknife``) so aggregates over levels or runs on the same images get intervals too.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.transforms import DivisiblePadd, ResizeWithPadOrCropd
from monai.utils import convert_to_tensor
from torch import nn

from medtransfer.analysis.cka import (MinibatchCKA, _gram, jackknife_interval, jackknife_minibatch_cka,
                                      unbiased_cka, unbiased_hsic)
from medtransfer.analysis.features import FeatureRecorder, layer_names
from medtransfer.analysis.rsa import rdm_from_gram, rsa, rsa_within_groups
from medtransfer.atomic import save_json
from medtransfer.data import eval_transforms, open_manifest
from medtransfer.errors import MedtransferError
from medtransfer.networks.config import NetworkConfigError, build_from_config, total_stride
from medtransfer.networks.parts import PART_NAMES, _part_table, dynunet_layout, part_of, state_tensors
from medtransfer.training.run_folder import RunFolder
from medtransfer.transfer.adapters import CheckpointError, load_checkpoint
from medtransfer.transfer.strategies import copy_parts, get_strategy

logger = logging.getLogger("medtransfer.analysis")

CKA_MODES = ("flatten", "pool")
MIN_BATCH = 4  # the unbiased HSIC estimator needs n >= 4 per minibatch
CKA_CI_LEVEL = 0.95


class CompareError(MedtransferError, ValueError):
    """A network cannot be loaded or two networks cannot be compared; the message says why."""


# ---------------------------------------------------------------------------------------------------------
# Loading networks
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LoadedNetwork:
    """A network and where its weights came from."""

    model: nn.Module
    source: str  # the file the weights were read from ("" for a random network)
    label: str  # short name for tables, e.g. "ft/model.pt" or "pre/epoch_0005"
    spatial_dims: int
    filters: list[int]
    in_channels: int = 1
    out_channels: int = 2
    loaded_parts: list[str] = field(default_factory=list)
    random_parts: list[str] = field(default_factory=list)  # seeded random init (init_seed below)
    init_seed: int = 0
    config: dict = field(default_factory=dict)  # run.json `config` when loaded from a run folder
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {
            "label": self.label,
            "source": self.source,
            "spatial_dims": self.spatial_dims,
            "filters": self.filters,
            "loaded_parts": self.loaded_parts,
            "random_parts": self.random_parts,
            "init_seed": self.init_seed,
            "notes": self.notes,
        }


def read_run_json(run_dir: str | Path) -> dict:
    record = RunFolder(run_dir).record
    if record is None:
        raise CompareError(f"{run_dir}: not a run folder (no readable run.json)")
    return record


def load_network(
    path: str | Path,
    checkpoint: str | Path | None = None,
    init_seed: int | None = None,
    device: str | torch.device = "cpu",
) -> LoadedNetwork:
    """A DynUNet from a run folder or a checkpoint file, in eval mode.

    * Run folder (holds ``run.json``): architecture from its ``config`` (``spatial_dims``, ``filters``);
      weights from ``checkpoint`` when given (relative paths are taken inside the folder), else ``model.pt``
      for a training run and ``pretrained.pt`` for a pretraining run (``config.task == "pretraining"``).
    * File: a medtransfer checkpoint, a plain state dict, or anything
      :func:`medtransfer.transfer.adapters.load_checkpoint` reads; the architecture (filters, channels) is
      read off the DynUNet tensor shapes. A file inside a run folder's ``checkpoints/`` uses that run's config.

    The output head is built with the file's number of channels (a reconstruction head has 1), so every
    tensor the file holds fits. Parts the file does not provide keep the random initialisation drawn from
    ``init_seed`` (default: the run's seed, else 0), listed in ``random_parts`` and logged.

    Raises:
        CompareError: for a folder without run.json or weights, or a file that does not fit a DynUNet.
    """
    path = Path(path)
    config: dict = {}
    if path.is_dir():
        config = read_run_json(path).get("config", {})
        if checkpoint is not None:
            weights = Path(checkpoint) if Path(checkpoint).is_absolute() or Path(checkpoint).exists() else path / checkpoint
        else:
            weights = RunFolder(path).weights_path()
        if not weights.is_file():
            raise CompareError(f"{path}: no weights file {weights.name} (is the run finished?)")
    else:
        weights = path
        folder = RunFolder.containing(path)
        if folder is not None:
            config = read_run_json(folder.path).get("config", {})
    if not weights.is_file():
        raise CompareError(f"checkpoint file not found: {weights}")
    raw_state = _raw_state(weights)
    layout = dynunet_layout(raw_state) or {}
    if not config and not layout:
        raise CompareError(f"{weights}: cannot tell the architecture: no DynUNet tensors and no run.json config")
    # the recorded configuration decides the architecture; a file's own channels decide the ends, so that a
    # pretraining head (1 channel for reconstruction) fits too
    architecture = config or layout
    in_channels = int(layout.get("in_channels") or 1)
    out_channels = int(layout.get("out_channels") or 2)
    seed = int(init_seed if init_seed is not None else config.get("seed", 0) or 0)
    try:
        model = build_from_config(architecture, in_channels=in_channels, out_channels=out_channels, init_seed=seed)
    except NetworkConfigError as error:
        raise CompareError(f"{weights}: {error}") from None
    try:
        adapted = load_checkpoint(weights, model)
    except CheckpointError as error:
        raise CompareError(str(error)) from None
    target = state_tensors(model)
    table = _part_table(model)
    with torch.no_grad():
        for name, tensor in adapted.state.items():
            if part_of(name, table) in adapted.available_parts:
                target[name].copy_(tensor)
    random_parts = [part for part in PART_NAMES if part not in adapted.available_parts]
    notes = list(adapted.notes)
    if random_parts:
        notes.append(f"{', '.join(random_parts)} not in {weights.name}: seeded random init (init_seed={seed})")
        logger.info("%s: %s", weights, notes[-1])
    label = f"{weights.parent.name}/{weights.stem}" if weights.parent.name else weights.stem
    return LoadedNetwork(
        model=model.to(device).eval(), source=str(weights.resolve()), label=label,
        spatial_dims=int(architecture["spatial_dims"]), filters=list(architecture.get("filters") or []),
        in_channels=in_channels, out_channels=out_channels,
        loaded_parts=list(adapted.available_parts), random_parts=random_parts, init_seed=seed, config=config,
        notes=notes,
    )


def random_network(like: LoadedNetwork, init_seed: int = 12345) -> LoadedNetwork:
    """A randomly initialised network of the same architecture (the "random init" reference of Karimi et al.)."""
    architecture = like.config or {"spatial_dims": like.spatial_dims, "filters": like.filters}
    model = build_from_config(architecture, in_channels=like.in_channels, out_channels=like.out_channels,
                              init_seed=init_seed)
    device = next(like.model.parameters()).device
    return LoadedNetwork(model=model.to(device).eval(), source="", label=f"random(seed={init_seed})",
                         spatial_dims=like.spatial_dims, filters=list(like.filters), in_channels=like.in_channels,
                         out_channels=like.out_channels, random_parts=list(PART_NAMES), init_seed=init_seed)


def starting_network(run_dir: str | Path) -> LoadedNetwork:
    """The weights a fine-tuning run started from: its seeded init with the strategy's parts loaded from its
    ``source_checkpoint`` (exactly what ApplyTransfer did before the first step)."""
    config = read_run_json(run_dir).get("config", {})
    seed = int(config.get("seed", 0) or 0)
    model = build_from_config(config, init_seed=seed)
    strategy = get_strategy(config.get("strategy", "scratch"))
    source = config.get("source_checkpoint")
    loaded: list[str] = []
    if strategy.needs_checkpoint and source:
        adapted = load_checkpoint(source, model)
        report = copy_parts(model, adapted.state, strategy, str(source))
        loaded = sorted({entry["part"] for entry in report.values() if entry["action"] == "loaded"})
    return LoadedNetwork(model=model.eval(), source=str(source or ""), label=f"start({strategy.name})",
                         spatial_dims=int(config["spatial_dims"]), filters=list(config["filters"]),
                         loaded_parts=loaded, random_parts=[p for p in PART_NAMES if p not in loaded],
                         init_seed=seed, config=config)


def _raw_state(weights: Path) -> dict[str, torch.Tensor]:
    try:
        raw = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CompareError(f"{weights}: not a readable weights file ({type(error).__name__}: {error})") from None
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        return raw["state_dict"]
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        return raw["model"]
    if isinstance(raw, dict):
        return {k.removeprefix("module."): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    raise CompareError(f"{weights}: expected a state dict or a checkpoint holding one, got {type(raw).__name__}")


# ---------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------


def image_batches(
    manifest,
    split: str = "test",
    spatial_size: Sequence[int] | None = None,
    batch_size: int = 8,
    max_images: int | None = None,
    seed: int | None = None,
    with_label: bool = False,
    divisor: int = 1,
) -> list[dict]:
    """A manifest split through the evaluation transforms, as a list of ``{"image", ["label"], "ids"}`` batches.

    Args:
        manifest: a :class:`medtransfer.data.Manifest` (or a name/path, opened with ``MEDTRANSFER_DATA``).
        split: ``training``, ``validation`` or ``test``.
        spatial_size: centre pad/crop every image to this size (batches then stack); ``None`` keeps each
            image's size, padded up to a multiple of ``divisor``, one image per batch.
        batch_size: images per batch (ignored without ``spatial_size``).
        max_images: use at most this many images: a seeded random sample when ``seed`` is given, else the first.
        with_label: include the labels (needed by LogME).
        divisor: the U-Net's total stride (:func:`medtransfer.networks.total_stride`); ``spatial_size`` must be a multiple.

    Images are loaded one at a time, so memory holds the batches only (they are small next to the features).
    """
    if isinstance(manifest, (str, Path)):
        manifest = open_manifest(manifest)
    items = manifest.datalist(split, require_labels=with_label)
    if max_images is not None and len(items) > max_images:
        if seed is None:
            items = items[:max_images]
        else:
            order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:max_images]
            items = [items[i] for i in sorted(order.tolist())]
    keys = ["image", "label"] if with_label else ["image"]
    if spatial_size is not None:
        if any(int(s) % divisor for s in spatial_size):
            raise CompareError(f"spatial_size {list(spatial_size)} must be a multiple of the U-Net's stride {divisor}")
        shape = ResizeWithPadOrCropd(keys=keys, spatial_size=list(spatial_size))
    else:
        shape, batch_size = DivisiblePadd(keys=keys, k=divisor), 1
    load = eval_transforms(manifest.dimensions, manifest.label_map, manifest.target_spacing, with_label=with_label)
    batches, pending = [], []
    for item in items:
        loaded = shape(load(item))
        pending.append(loaded)
        if len(pending) == batch_size:
            batches.append(_stack(pending, keys))
            pending = []
    if pending:
        batches.append(_stack(pending, keys))
    return batches


def _stack(items: list[dict], keys: list[str]) -> dict:
    batch = {key: torch.stack([convert_to_tensor(item[key], track_meta=False) for item in items]) for key in keys}
    batch["ids"] = [item.get("id", "") for item in items]
    return batch


def stride_of(network: LoadedNetwork | nn.Module) -> int:
    """The network's total stride (what every input side must be a multiple of)."""
    return total_stride(network.model if isinstance(network, LoadedNetwork) else network)


# ---------------------------------------------------------------------------------------------------------
# Layer CKA
# ---------------------------------------------------------------------------------------------------------


def layer_cka(
    model_a: nn.Module | LoadedNetwork,
    model_b: nn.Module | LoadedNetwork,
    batches: Iterable[torch.Tensor | Mapping[str, torch.Tensor]],
    layers: str | Sequence[str] = "encoder",
    mode: str = "flatten",
    with_rsa: bool = True,
    device: str | torch.device | None = None,
    uncertainty: bool = True,
) -> list[dict]:
    """Per-level CKA (and RSA) between two networks of the same family on the same images.

    Each level of ``model_a`` is compared with the same-named level of ``model_b`` (the diagonal of the
    layer × layer matrix — the comparison of Karimi et al. / Goerttler & Obermayer: how much did layer ℓ
    change?). Both networks are put in eval mode and run without gradients; training flags are restored.

    Args:
        model_a, model_b: networks (or :class:`LoadedNetwork`) with the same level names.
        batches: ``(B, C, *spatial)`` tensors or dicts with ``"image"``; see :func:`image_batches`.
        layers: ``"encoder"``, ``"decoder"``, ``"all"`` or explicit level names.
        mode: ``"flatten"`` (minibatch CKA; batches of >= 4 equal-size images) or ``"pool"`` (global
            average per example, unbiased CKA over all examples; any batch sizes). See the module doc.
        with_rsa: also compute RSA on the representation the CKA uses (see the module doc).
        device: where images go; default the device of ``model_a``'s parameters.
        uncertainty: compute the jackknife replicates and the 95 % interval of each level's CKA.

    Returns:
        One dict per level, forward order: ``{"layer", "part", "cka", "cka_ci_low", "cka_ci_high",
        "cka_jackknife", "rsa", "n_examples", "n_batches", "mode", "dropped_examples"}`` (``rsa`` None
        without ``with_rsa``; the interval None and ``cka_jackknife`` empty without ``uncertainty``).
    """
    if mode not in CKA_MODES:
        raise CompareError(f"unknown CKA mode {mode!r}; expected one of {CKA_MODES}")
    net_a = model_a.model if isinstance(model_a, LoadedNetwork) else model_a
    net_b = model_b.model if isinstance(model_b, LoadedNetwork) else model_b
    names = layer_names(net_a, layers) if isinstance(layers, str) else list(layers)
    missing = [n for n in names if n not in layer_names(net_b, "all")]
    if missing:
        raise CompareError(f"levels {missing} of network A are not levels of network B")
    device = torch.device(device) if device is not None else next(net_a.parameters()).device
    table = _part_table(net_a)
    minibatch = MinibatchCKA(len(names), len(names)) if mode == "flatten" else None
    pooled_a: dict[str, list] = {n: [] for n in names}
    pooled_b: dict[str, list] = {n: [] for n in names}
    batch_grams_a: dict[str, list] = {n: [] for n in names}  # per minibatch, for the jackknife
    batch_grams_b: dict[str, list] = {n: [] for n in names}
    rdms_a: dict[str, list] = {n: [] for n in names}  # per minibatch, for RSA on the flattened maps
    rdms_b: dict[str, list] = {n: [] for n in names}
    rsa_errors: dict[str, str] = {}
    grams_a: dict[str, torch.Tensor] = {}
    grams_b: dict[str, torch.Tensor] = {}
    n_examples = n_batches = dropped = 0
    with _evaluating(net_a), _evaluating(net_b):
        for batch in batches:
            images = _images(batch).to(device)
            if mode == "flatten" and images.shape[0] < MIN_BATCH:
                dropped += images.shape[0]
                continue
            # one network's features at a time: each is reduced (Gram matrix, pooled vectors) before the other
            # runs, so peak memory is one network's features of one minibatch
            for net, pooled, grams, history, rdms in ((net_a, pooled_a, grams_a, batch_grams_a, rdms_a),
                                                      (net_b, pooled_b, grams_b, batch_grams_b, rdms_b)):
                features = _record(net, names, images)
                for name in names:
                    fmap = features.pop(name)
                    if mode == "flatten":
                        flat = fmap.reshape(fmap.shape[0], -1)
                        grams[name] = _gram(flat)
                        history[name].append(grams[name].cpu())
                        if with_rsa and name not in rsa_errors:
                            try:
                                rdms[name].append(rdm_from_gram(grams[name], flat.sum(dim=1, dtype=torch.float64),
                                                                flat.shape[1]))
                            except ValueError as error:  # constant features: correlation undefined
                                rsa_errors[name] = str(error)
                        del flat
                    else:
                        pooled[name].append(_global_pool(fmap))
                    del fmap
                del features
            if minibatch is not None:
                # diagonal only: the cross-layer terms would cost L² HSICs for nothing we report
                for i, name in enumerate(names):
                    ka, kb = grams_a[name], grams_b[name]
                    minibatch.hsic_ab[i, i] += unbiased_hsic(ka, kb).cpu()
                    minibatch.hsic_aa[i] += unbiased_hsic(ka, ka).cpu()
                    minibatch.hsic_bb[i] += unbiased_hsic(kb, kb).cpu()
                minibatch.num_batches += 1
            n_examples += images.shape[0]
            n_batches += 1
    if n_batches == 0:
        raise CompareError(f"no batch of >= {MIN_BATCH} images to compare (mode {mode!r}); {dropped} images dropped")
    if minibatch is not None:
        cka_values = (minibatch.hsic_ab.diagonal() / torch.sqrt(minibatch.hsic_aa * minibatch.hsic_bb)).tolist()
    else:
        if n_examples < MIN_BATCH:
            raise CompareError(f"CKA needs >= {MIN_BATCH} examples, got {n_examples}")
        cka_values = [float(unbiased_cka(torch.cat(pooled_a[n]), torch.cat(pooled_b[n]))) for n in names]
    rows = []
    for name, value in zip(names, cka_values):
        rsa_value = None
        if with_rsa and n_examples >= 3:
            try:
                if name in rsa_errors:
                    raise ValueError(rsa_errors[name])
                if mode == "flatten":
                    rsa_value = rsa_within_groups(rdms_a[name], rdms_b[name])
                else:
                    rsa_value = rsa(torch.cat(pooled_a[name]), torch.cat(pooled_b[name]))
            except ValueError as error:  # constant features: correlation undefined
                logger.warning("RSA of %s undefined: %s", name, error)
        low = high = None
        replicates: list[float | None] = []
        if uncertainty:
            if mode == "flatten":
                ka, kb = batch_grams_a[name], batch_grams_b[name]
            else:
                ka, kb = [_gram(torch.cat(pooled_a[name]))], [_gram(torch.cat(pooled_b[name]))]
            draws = jackknife_minibatch_cka(ka, kb)
            if _finite(value) is not None:
                low, high = (_finite(v) for v in jackknife_interval(value, draws, CKA_CI_LEVEL))
            replicates = [v if math.isfinite(v) else None for v in draws.tolist()]
        rows.append({
            "layer": name, "part": part_of(name, table), "cka": _finite(value), "cka_ci_low": low,
            "cka_ci_high": high, "cka_jackknife": replicates, "rsa": _finite(rsa_value),
            "n_examples": n_examples, "n_batches": n_batches, "mode": mode, "dropped_examples": dropped,
        })
    return rows


def _record(model: nn.Module, names: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
    with FeatureRecorder(model, names) as recorder:
        model(images)
    return dict(recorder.features)


def _global_pool(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=tuple(range(2, t.ndim))).to(device="cpu", dtype=torch.float64)


def _images(batch) -> torch.Tensor:
    value = batch["image"] if isinstance(batch, Mapping) else batch
    return convert_to_tensor(value, track_meta=False)


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class _evaluating:
    """Eval mode and no gradients inside; training flags restored on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.grad = torch.no_grad()
        self.grad.__enter__()
        self.model.eval()
        return self

    def __exit__(self, *exc):
        self.grad.__exit__(*exc)
        for module, training in self.flags:
            module.training = training


# ---------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------


def write_cka_report(
    table: Sequence[Mapping] | Mapping[str, Sequence[Mapping]],
    out_dir: str | Path,
    title: str = "layer CKA",
    meta: Mapping | None = None,
) -> dict[str, Path]:
    """``cka.csv``, ``cka.json`` and ``cka.png`` (heat map, levels × comparisons) in ``out_dir``.

    Args:
        table: the rows of :func:`layer_cka`, or ``{comparison name: rows}`` for several comparisons
            (e.g. "vs start", "vs random", "seed 0 vs 1") — one heat-map column each.
        meta: extra JSON fields (what was compared, data, mode).

    Returns:
        ``{"csv", "json", "png"}`` paths.
    """
    # matplotlib (optional for CKA numbers) only when a report draws its heat map
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comparisons = {"A vs B": list(table)} if not isinstance(table, Mapping) else {k: list(v) for k, v in table.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = ["comparison", "layer", "part", "cka", "cka_ci_low", "cka_ci_high", "rsa", "n_examples", "n_batches",
              "mode", "dropped_examples"]
    csv_path = out / "cka.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for comparison, rows in comparisons.items():
            for row in rows:
                writer.writerow({"comparison": comparison, **row})
    json_path = out / "cka.json"
    save_json(json_path, {"meta": dict(meta or {}), "comparisons": comparisons})

    layers = list(dict.fromkeys(row["layer"] for rows in comparisons.values() for row in rows))
    names = list(comparisons)
    has_rsa = any(row.get("rsa") is not None for rows in comparisons.values() for row in rows)
    metrics = ["cka", "rsa"] if has_rsa else ["cka"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(1.6 + 1.5 * len(names) * len(metrics) + 1.5, 0.9 + 0.42 * len(layers)),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        values = np.full((len(layers), len(names)), np.nan)
        for j, name in enumerate(names):
            for row in comparisons[name]:
                if row.get(metric) is not None:
                    values[layers.index(row["layer"]), j] = row[metric]
        low = 0.0 if metric == "cka" else -1.0
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=low, vmax=1.0, aspect="auto")
        for i in range(len(layers)):
            for j in range(len(names)):
                if np.isfinite(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", fontsize=8,
                            color="black" if values[i, j] > low + 0.6 * (1 - low) else "white")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        parts = {row["layer"]: row.get("part") for rows in comparisons.values() for row in rows}
        ax.set_yticks(range(len(layers)), [f"{layer} ({parts.get(layer)})" for layer in layers], fontsize=8)
        ax.set_title(metric.upper(), fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.08)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png_path = out / "cka.png"
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return {"csv": csv_path, "json": json_path, "png": png_path}


def run_cka_summary(
    run_dir: str | Path,
    batches: Sequence,
    layers: str = "all",
    mode: str = "flatten",
    other_seed_runs: Sequence[str | Path] = (),
    random_seed: int = 12345,
    uncertainty: bool = True,
) -> dict[str, list[dict]]:
    """For a study's ``analysis: {cka: true}``: one fine-tuned run against its starting weights, a random
    network, and the runs of the same cell with other seeds. ``{comparison name: layer_cka rows}``."""
    trained = load_network(run_dir)
    boot = {"uncertainty": uncertainty}
    result = {
        "vs start": layer_cka(trained, starting_network(run_dir), batches, layers, mode, **boot),
        "vs random": layer_cka(trained, random_network(trained, random_seed), batches, layers, mode, **boot),
    }
    for other in other_seed_runs:
        other_net = load_network(other)
        result[f"vs seed {other_net.config.get('seed', Path(other).name)}"] = layer_cka(trained, other_net, batches, layers, mode,
                                                                                   **boot)
    return result
