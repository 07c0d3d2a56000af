"""Study files: parse, validate (before any training) and expand into runs with stable ids.

A study file is YAML::

    name: demo
    spatial_dims: 2                 # picks bundles/binary_seg_{2,3}d unless `bundle` names one
    bundle: binary_seg_2d           # a folder in bundles/ or a path to a bundle
    data_manifest: synthetic_2d     # target data: a manifest name (data_manifests/ or <data_root>/<name>.json) or path
    data_root: null                 # or `medtransfer study run ... --data-root`
    settings: {filters: [8, 16, 32]}   # bundle keys shared by every run
    pretraining:                    # stages; each is run once and shared by every fine-tune using it
      - objective: contrastive_reconstruction
        name: conrec                # label in tables (default: the objective)
        data_manifest: synthetic_2d # source data (default: the target manifest)
        fraction: 1.0
        seed: 0
        label_map: null
        settings: {max_epochs: 8}
    finetune:
      strategies: [scratch, encoder, decoder]
      fractions: [0.1, 0.5]
      seeds: [0, 1]
      settings: {max_epochs: 10}
    analysis:                       # optional
      cka: true                     # per fine-tune: layer CKA vs its start, vs a random net, vs other seeds
      cka_images: 32                # test images the CKA sees (seeded sample)
      transferability:              # score every checkpoint of every pretraining run on the target, and
        strategy: encoder           # fine-tune from each checkpoint (this strategy and fraction, every seed)
        fraction: 0.1               # to correlate the score with the Dice it reaches (Spearman)
    comparisons:                    # optional pairs [arm, reference] besides "each strategy vs scratch"; an arm is
      - [encoder, encoder_frozen]   # a strategy (compared within each pretraining stage) or stage/strategy
      - [conrec/encoder, supervised/encoder]
    resources:                      # optional, Ray executor only (not part of the content hash): what one run asks
      pretraining: {cpus: 4, gpus: 1}   # of a node; --cpus-per-run / --gpus-per-run override it for every run
      finetune: {cpus: 2, gpus: 1}
    power:                          # optional (not part of the content hash): the design the seeds were sized for
      run_sd: 0.015                 # seed-to-seed sd of one arm's mean Dice, measured at convergence
      effect: 0.03                  # the difference each comparison should detect (paired t over seeds)
      equivalence_margin: 0.03      # ± margin of the equivalence comparisons (TOST) ...
      equivalence: [decoder]        # ... of these arms with their reference (default: decoder, when in the grid)
      reference_dice: 0.67          # optional: the scratch Dice expected; random_encoder_frozen vs scratch is then
                                    # sized for the findings page's claim-4 test (arm − 0.9 × scratch), not `effect`
      alpha: 0.05
    `study plan` and `study run` print one warning line per comparison (each strategy vs scratch, each pair of
    `comparisons`) whose power with the study's seeds is below 0.5 (medtransfer.study.size.power_lines).

A `pretraining` entry may instead name a checkpoint file that is not trained by the study (public weights, a
run of another study): ``{name: mouse_sc, checkpoint: ../shared/checkpoints/x/model.pt, source_network: auto,
trained_on: "mouse spinal cord MRI"}``. Its fine-tunes load that file (`source_network: auto` builds the file's own
architecture, as `medtransfer train --source_network auto`); their ids hash the file's sha256, so other weights are
other runs. The path is relative to the study file. The leakage guard cannot see what such a file was trained on:
the study records it as unchecked, with the `trained_on` the study file states.

Strategies that load nothing (scratch, random_encoder_frozen) do not depend on a pretraining stage: they
run once per fraction × seed (objective "none"). Every run id ends with 8 hex digits hashing the run's full
parameters (shared settings, the data manifest's content, and for fine-tunes the pretraining run id), so a
changed configuration gives new ids and results of different configurations are never mixed.
"""

from __future__ import annotations

from medtransfer.errors import MedtransferError

import functools
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medtransfer import registry
from medtransfer.planning.plan import load_plan, static_value

TOP_KEYS = {"name", "description", "spatial_dims", "bundle", "data_manifest", "data_root", "settings", "pretraining",
            "finetune", "analysis", "comparisons", "resources", "power"}
POWER_KEYS = {"run_sd", "effect", "equivalence_margin", "equivalence", "reference_dice", "alpha"}
NOT_HASHED = ("resources", "power")  # where runs execute and what the seeds were sized for: not what runs compute
ANALYSIS_KEYS = {"cka", "cka_images", "cka_layers", "cka_mode", "transferability"}
TRANSFERABILITY_KEYS = {"strategy", "fraction"}
STAGE_KEYS = {"objective", "name", "data_manifest", "data_root", "fraction", "seed", "label_map", "settings",
              "target_labels"}
CHECKPOINT_SOURCE_KEYS = {"name", "checkpoint", "source_network", "trained_on"}
FINETUNE_KEYS = {"strategies", "fractions", "seeds", "settings"}
# Bundle keys the study sets itself, per run: not allowed in `settings`.
RESERVED_SETTINGS = {"output_dir", "data_manifest", "data_root", "fraction", "seed", "strategy", "source_checkpoint",
                     "objective", "label_map", "bundle_root", "overwrite", "dataset_dir"}
NO_SOURCE = "none"
# Study and stage names become folder names: plain slugs only (no "/", no leading "." or "-", no "..").
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# A string starting with one of these is MONAI config syntax (expression, reference, macro) once it reaches
# `monai.bundle run` as an override: study files are data, so such values need `--trusted`.
CONFIG_SYNTAX = ("$", "@", "%")


class StudyError(MedtransferError, ValueError):
    """The study file (or the study folder) cannot be used as given; raised before any training starts."""


def _hash(obj: Any, n: int = 8) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", str(text)).strip("_") or "x"


def _fraction_text(fraction: float) -> str:
    from medtransfer.data.manifest import fraction_key

    return fraction_key(fraction)


@functools.lru_cache(maxsize=None)
def _plan_keys(path: str) -> dict:
    """A plan file's bundle keys, read once per process (a run's properties are asked for on every poll)."""
    return load_plan(path)["bundle_keys"]


@dataclass(frozen=True)
class Run:
    """One bundle execution of a study."""

    run_id: str
    kind: str  # "pretrain" or "finetune"
    objective: str  # stage name, or "none" for runs that load no source
    strategy: str | None
    fraction: float
    seed: int
    config_files: tuple[str, ...]
    args: dict[str, Any]  # bundle overrides (without output_dir / source_checkpoint)
    params: dict[str, Any]  # what the id hashes
    depends_on: str | None = None
    source: str | None = None  # source manifest name (pretraining runs)
    source_file: str = "pretrained.pt"  # which file of the pretraining run a fine-tune loads
    checkpoint_epoch: int | None = None  # fine-tunes from an intermediate checkpoint (transferability analysis)
    checkpoint_path: str | None = None  # fine-tunes from a checkpoint source: the file (no pretraining run)

    @property
    def max_epochs(self) -> int | None:
        """The run's maximum epochs as it will resolve them: the study's setting, else its plan's (None: neither)."""
        value = self.args.get("max_epochs")
        if value is None and self.args.get("plan"):
            value = _plan_keys(str(self.args["plan"])).get("max_epochs")
        return int(value) if value is not None else None

    def weights_name(self) -> str:
        return "pretrained.pt" if self.kind == "pretrain" else "model.pt"


@dataclass
class ManifestInfo:
    name: str
    path: Path
    content: dict
    digest: str
    data_root: str | None


@dataclass
class StudySpec:
    """A validated study: the raw content (as stored in study.json) and what it resolved to."""

    content: dict
    content_hash: str
    name: str
    bundle_root: Path
    target: ManifestInfo
    stages: list[dict]
    strategies: list[str]
    fractions: list[float]
    seeds: list[int]
    settings: dict
    finetune_settings: dict
    source_file: str | None = None
    manifests: dict[str, ManifestInfo] = field(default_factory=dict)
    analysis: dict = field(default_factory=dict)
    trusted: bool = False  # settings may hold MONAI expressions (`study run --trusted`)
    comparisons: list[tuple[str, str]] = field(default_factory=list)  # (arm, reference arm), report statistics
    checkpoint_sources: list[dict] = field(default_factory=list)  # pretraining entries that name a file
    resources: dict = field(default_factory=dict)  # run kind -> {cpus, gpus} a run asks of a Ray node (cluster.py)
    power: dict = field(default_factory=dict)  # the `power` block, checked (_check_power); {} when absent

    # Expansion ----------------------------------------------------------------------------------------------
    def expand(self) -> list[Run]:
        """Pretraining runs first, then fine-tunes; ids are stable across calls and machines."""
        from medtransfer.transfer import STRATEGIES

        runs: list[Run] = []
        stage_runs: dict[str, Run] = {}
        for stage in self.stages:
            manifest = self.manifests[stage["data_manifest"]]
            settings = {**self.settings, **stage["settings"]}
            params = {
                "kind": "pretrain",
                "bundle": self.bundle_root.name,
                "objective": stage["objective"],
                "data_manifest": manifest.name,
                "manifest_digest": manifest.digest,
                "fraction": stage["fraction"],
                "seed": stage["seed"],
                "label_map": stage["label_map"],
                "settings": _hashable(settings),
            }
            transferability = self.analysis.get("transferability")
            if transferability:  # the pretraining run scores each scheduled checkpoint on the target
                params["transferability_target"] = self.target.digest
            run_id = f"pre-{_slug(stage['name'])}-{_slug(manifest.name)}-{_hash(params)}"
            args = {**settings, "data_manifest": str(manifest.path), "fraction": stage["fraction"],
                    "seed": stage["seed"]}
            if transferability:
                args["transferability_manifest"] = str(self.target.path)
                if self.target.data_root:
                    args["transferability_data_root"] = self.target.data_root
            if stage["label_map"] is not None:
                args["label_map"] = stage["label_map"]
            if manifest.data_root:
                args["data_root"] = manifest.data_root
            run = Run(run_id, "pretrain", stage["name"], None, stage["fraction"], stage["seed"],
                      registry.pretrain_config_files(self.bundle_root, stage["objective"]),
                      args, params, source=manifest.name)
            stage_runs[stage["name"]] = run
            runs.append(run)
        settings = {**self.settings, **self.finetune_settings}
        for strategy in self.strategies:
            sources = [NO_SOURCE] if not STRATEGIES[strategy].load else [
                stage["name"] for stage in self.stages if not _unplannable(stage, strategy)]
            files = [] if not STRATEGIES[strategy].load else self.checkpoint_sources
            for source in sources:
                for fraction in self.fractions:
                    for seed in self.seeds:
                        runs.append(self._finetune_run(source, stage_runs.get(source), strategy, fraction, seed,
                                                       settings))
            for checkpoint in files:
                for fraction in self.fractions:
                    for seed in self.seeds:
                        runs.append(self._finetune_run(checkpoint["name"], None, strategy, fraction, seed, settings,
                                                       checkpoint_source=checkpoint))
        runs += self._checkpoint_runs(stage_runs, settings)
        return runs

    def not_planned(self) -> list[str]:
        """Sentences for the (stage, strategy) pairs the grid leaves out: the strategy would load a part the
        stage's objective does not train (a classification source has no decoder), which ApplyTransfer refuses."""
        from medtransfer.transfer import STRATEGIES

        out = []
        for stage in self.stages:
            missing = [s for s in self.strategies if STRATEGIES[s].load and _unplannable(stage, s)]
            if missing:
                out.append(f"{', '.join(missing)} from `{stage['name']}` not run: a {stage['objective']} source "
                           f"trains only its {', '.join(_trained_parts(stage))}, and "
                           f"{'these strategies load' if len(missing) > 1 else 'this strategy loads'} more")
        return out

    def _finetune_run(self, source: str, pre: Run | None, strategy: str, fraction: float, seed: int, settings: dict,
                      checkpoint_epoch: int | None = None, source_file: str = "pretrained.pt",
                      checkpoint_source: dict | None = None) -> Run:
        """One fine-tune; its id hashes everything it depends on (a checkpoint fine-tune also its epoch, a
        checkpoint source its file's sha256 and architecture rule)."""
        params = {
            "kind": "finetune",
            "bundle": self.bundle_root.name,
            "data_manifest": self.target.name,
            "manifest_digest": self.target.digest,
            "strategy": strategy,
            "fraction": fraction,
            "seed": seed,
            "settings": _hashable(settings),
            "pretraining_run": pre.run_id if pre else None,
        }
        label = _slug(source)
        if checkpoint_epoch is not None:
            params["source_checkpoint_epoch"] = checkpoint_epoch
            label += f"-e{checkpoint_epoch}"
        if checkpoint_source is not None:
            params["source_checkpoint_sha256"] = checkpoint_source["sha256"]
            params["source_network"] = checkpoint_source["source_network"]
        run_id = f"ft-{label}-{strategy}-f{_fraction_text(fraction)}-s{seed}-{_hash(params)}"
        args = {**settings, "data_manifest": str(self.target.path), "fraction": fraction, "seed": seed}
        if self.target.data_root:
            args["data_root"] = self.target.data_root
        if checkpoint_source is not None and checkpoint_source["source_network"]:
            args["source_network"] = checkpoint_source["source_network"]
        return Run(run_id, "finetune", source, strategy, fraction, seed,
                   registry.transfer_config_files(self.bundle_root, strategy), args, params,
                   depends_on=pre.run_id if pre else None, source_file=source_file,
                   checkpoint_epoch=checkpoint_epoch,
                   checkpoint_path=checkpoint_source["checkpoint"] if checkpoint_source else None)

    def _checkpoint_runs(self, stage_runs: dict[str, Run], settings: dict) -> list[Run]:
        """Fine-tunes from every scheduled checkpoint of every pretraining run (analysis.transferability).

        The final checkpoint is pretrained.pt; when the grid already fine-tunes it with the same strategy and
        fraction, those runs are reused (no run is trained twice)."""
        transferability = self.analysis.get("transferability")
        if not transferability:
            return []
        strategy, fraction = transferability["strategy"], transferability["fraction"]
        in_grid = strategy in self.strategies and fraction in self.fractions
        runs = []
        for stage in self.stages:
            for epoch in stage["checkpoint_epochs"]:
                final = epoch == stage["max_epochs"]
                if final and in_grid:
                    continue
                source_file = "pretrained.pt" if final else f"checkpoints/epoch_{epoch:04d}.pt"
                runs += [self._finetune_run(stage["name"], stage_runs[stage["name"]], strategy, fraction, seed,
                                            settings, checkpoint_epoch=epoch, source_file=source_file)
                         for seed in self.seeds]
        return runs


# Loading and validation -------------------------------------------------------------------------------------
def _trained_parts(stage: dict) -> tuple[str, ...]:
    from medtransfer.pretraining import TRAINED_PARTS

    return TRAINED_PARTS[stage["objective"]]


def _unplannable(stage: dict, strategy: str) -> bool:
    """True when `strategy` must load a part that the stage's objective does not train."""
    from medtransfer.transfer import STRATEGIES

    return not set(STRATEGIES[strategy].load) <= set(_trained_parts(stage))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise StudyError(message)


def _resolve_bundle(content: dict, base: Path, trusted: bool = False) -> Path:
    """The bundle folder the study's `bundle` key names. A bundle's configs run as code in every run, so unless
    `trusted` it must resolve (symlinks followed) inside the study file's folder, the working directory or the
    packaged bundles."""
    from medtransfer.data.paths import OutsideRootError, is_inside

    bundle = content.get("bundle") or f"binary_seg_{_number(content.get('spatial_dims', 2), 'spatial_dims', int)}d"
    candidates = [Path(bundle)] if Path(bundle).is_absolute() else [base / bundle, Path.cwd() / bundle,
                                                                       registry.bundles_dir() / bundle]
    for candidate in candidates:
        if registry.is_trainable_bundle(candidate):
            target = candidate.resolve()
            roots = [base.resolve(), Path.cwd().resolve(), registry.bundles_dir().resolve()]
            if not trusted and not any(is_inside(target, root) for root in roots):
                raise OutsideRootError(
                    f"bundle {bundle!r} resolves to {target}, outside the study file's folder, the working directory "
                    f"and the packaged bundles ({', '.join(map(str, dict.fromkeys(roots)))}); its configs would run as "
                    "code in every run: pass --trusted if you wrote it or have read it")
            return target
    raise StudyError(f"unknown bundle {bundle!r}: not a bundle folder ({registry.TRAIN}); "
                     f"known: {', '.join(registry.bundle_names())}")


def _open_manifest_info(name: str, data_root: str | None, spatial_dims: int, base: Path) -> ManifestInfo:
    from medtransfer.data.manifest import ManifestError, read_manifest_file
    from medtransfer.data.open import find_manifest

    try:
        candidate = base / name
        in_root = Path(data_root).expanduser() / f"{name}.json" if data_root else None
        if candidate.suffix == ".json" and candidate.is_file():
            path = candidate
        elif in_root is not None and in_root.is_file():  # a derived manifest kept with its data (data slices)
            path = in_root
        else:
            path = find_manifest(name)
        content = read_manifest_file(path)
    except ManifestError as error:
        raise StudyError(f"data manifest {name!r}: {error}") from None
    _require(int(content["dimensions"]) == spatial_dims,
             f"data manifest {name!r} is {content['dimensions']}D but the bundle trains a {spatial_dims}D network")
    if data_root is not None:
        _require(Path(data_root).expanduser().is_dir(), f"data root for {name!r} is not a folder: {data_root}")
        data_root = str(Path(data_root).expanduser().resolve())
    elif not content.get("generator") and not os.environ.get("MEDTRANSFER_DATA"):
        raise StudyError(f"data manifest {name!r} needs its data: pass --data-root, set `data_root` in the study "
                         f"file, or set MEDTRANSFER_DATA")
    digest = _hash({k: content[k] for k in ("training", "validation", "test", "fractions", "dimensions")}, 16)
    return ManifestInfo(content["name"], Path(path).resolve(), content, digest, data_root)


def config_syntax(value: Any, where: str) -> list[str]:
    """`where = value` for every string in `value` (nested lists/dicts too) that MONAI would not read as data."""
    if isinstance(value, str):
        return [f"{where} = {value!r}"] if value.startswith(CONFIG_SYNTAX) else []
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            found += config_syntax(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found += config_syntax(item, f"{where}[{index}]")
    return found


def _refuse_config_syntax(value: Any, where: str, trusted: bool) -> None:
    found = [] if trusted else config_syntax(value, where)
    _require(not found, f"{found[0] if found else ''}: a value starting with $, @ or % is a MONAI expression or "
                        "reference that `monai.bundle run` would execute; study files are data. Write the literal value, "
                        "or pass `medtransfer study run --trusted` for a study file you wrote or have read")


def _check_name(name: Any, where: str) -> str:
    text = str(name)
    _require(isinstance(name, (str, int)) and NAME_PATTERN.match(text) is not None and ".." not in text,
             f"{where}: {text!r} is not a plain name; use letters, digits, '_', '-' and '.' (it becomes a folder name, "
             "so no '/', no '..' and no leading '.' or '-')")
    return text


def _number(value: Any, where: str, kind: type = float):
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError
        return kind(value)
    except (TypeError, ValueError):
        raise StudyError(f"{where}: {value!r} is not a{'n integer' if kind is int else ' number'}") from None


def _numbers(value: Any, where: str, kind: type = float) -> list:
    _require(value is None or isinstance(value, list), f"{where}: must be a list, got {value!r}")
    return [_number(item, f"{where}[{index}]", kind) for index, item in enumerate(value or [])]


def _check_label_map(label_map: Any, where: str) -> dict | None:
    """None, or {source value: 0 or 1} with at least one value mapped to 1 (else there is nothing to segment)."""
    if label_map is None:
        return None
    _require(isinstance(label_map, dict) and label_map,
             f"{where}: must be a mapping of label values onto 0 or 1, e.g. {{1: 1, 2: 1}}, got {label_map!r}")
    for key, value in label_map.items():
        _require(not isinstance(value, bool) and value in (0, 1) and str(key).lstrip("-").isdigit(),
                 f"{where}: {key!r}: {value!r} is not an integer label value mapped onto 0 or 1")
    _require(1 in label_map.values(), f"{where}: maps every label value to 0 (background): nothing would be "
                                      "segmented; map at least one value to 1")
    return label_map


def _check_settings(settings: Any, where: str, bundle_keys: set[str]) -> dict:
    _require(settings is None or isinstance(settings, dict), f"{where}: must be a mapping of bundle keys")
    settings = dict(settings or {})
    for key in settings:
        _require(key not in RESERVED_SETTINGS, f"{where}: {key!r} is set by the study itself, not in settings")
        _require(key in bundle_keys, f"{where}: unknown bundle setting {key!r}")
    return settings


def _bind_plan(settings: dict, base: Path, where: str) -> dict:
    """A `plan` setting (a plan.json from `medtransfer plan`) is a path relative to the study file; it is checked
    here and handed to every run as an absolute path. Run ids hash its content (`_hashable`), never its path."""
    if not settings.get("plan"):
        return settings
    from medtransfer.planning import PlanError, load_plan

    path = Path(str(settings["plan"])).expanduser()
    path = (path if path.is_absolute() else base / path).resolve()
    try:
        load_plan(path)
    except PlanError as error:
        raise StudyError(f"{where}.plan: {error}") from None
    return {**settings, "plan": str(path)}


def _hashable(settings: dict) -> dict:
    """Settings as a run id hashes them: a plan by the sha256 of its bundle keys, not by where the file lies."""
    if not settings.get("plan"):
        return settings
    from medtransfer.planning import load_plan, plan_digest

    return {**settings, "plan": "sha256:" + plan_digest(load_plan(settings["plan"]))}


def _check_fractions(fractions: list[float], info: ManifestInfo, where: str) -> None:
    for fraction in fractions:
        _require(0 < fraction <= 1, f"{where}: fraction {fraction} is outside (0, 1]; a fraction of the training "
                                    f"cases, one of {', '.join(sorted(info.content['fractions'], key=float))}")
        key = _fraction_text(fraction)
        _require(key in info.content["fractions"],
                 f"{where}: fraction {fraction} is not in manifest {info.name!r}; available: "
                 f"{', '.join(sorted(info.content['fractions'], key=float))}")


def _checkpoint_source(raw: dict, where: str, base: Path) -> dict:
    """A `pretraining` entry naming a checkpoint file: validated, resolved against the study file's folder."""
    from medtransfer.atomic import sha256_of

    unknown = set(raw) - CHECKPOINT_SOURCE_KEYS
    _require(not unknown, f"{where}: unknown key(s) {', '.join(sorted(unknown))} for a checkpoint source (allowed: "
                          f"{', '.join(sorted(CHECKPOINT_SOURCE_KEYS))}; a checkpoint is not trained by the study)")
    _require(isinstance(raw["checkpoint"], str) and raw["checkpoint"], f"{where}.checkpoint: a file path")
    path = Path(raw["checkpoint"]).expanduser()
    path = path if path.is_absolute() else base / path
    _require(path.is_file(), f"{where}.checkpoint: no such file: {path}")
    network = raw.get("source_network")
    _require(network in (None, "auto"), f"{where}.source_network: `auto` (build the file's own architecture) or "
                                        f"absent (the study's network), not {network!r}")
    trained_on = raw.get("trained_on")
    _require(trained_on is None or isinstance(trained_on, str), f"{where}.trained_on: a sentence, e.g. the data set")
    name = _check_name(raw.get("name") or _slug(path.stem), f"{where}.name")
    _require(name != NO_SOURCE, f"{where}: {NO_SOURCE!r} is reserved for runs without a source")
    return {"name": name, "checkpoint": str(path.resolve()), "sha256": sha256_of(path), "source_network": network,
            "trained_on": trained_on}


def _check_analysis(raw: Any, stages: list[dict], strategies: list[str], fractions: list[float],
                    target: ManifestInfo) -> dict:
    """The `analysis` block with defaults filled in; {} when absent."""
    from medtransfer.transfer import STRATEGIES

    if raw is None:
        return {}
    _require(isinstance(raw, dict), "analysis: must be a mapping")
    unknown = set(raw) - ANALYSIS_KEYS
    _require(not unknown, f"analysis: unknown key(s) {', '.join(sorted(unknown))}; allowed: "
                          f"{', '.join(sorted(ANALYSIS_KEYS))}")
    analysis = {"cka": bool(raw.get("cka", False)), "cka_images": _number(raw.get("cka_images", 32), "analysis.cka_images", int),
                "cka_layers": str(raw.get("cka_layers", "all")), "cka_mode": str(raw.get("cka_mode", "flatten"))}
    _require(analysis["cka_layers"] in ("encoder", "decoder", "all"),
             f"analysis.cka_layers: one of encoder, decoder, all, not {analysis['cka_layers']!r}")
    _require(analysis["cka_mode"] in ("flatten", "pool"),
             f"analysis.cka_mode: one of flatten, pool, not {analysis['cka_mode']!r}")
    _require(analysis["cka_images"] >= 4, "analysis.cka_images: at least 4 images")
    transferability = raw.get("transferability", False)
    if transferability:
        _require(bool(stages), "analysis.transferability: needs a pretraining stage whose checkpoints are scored")
        settings = transferability if isinstance(transferability, dict) else {}
        unknown = set(settings) - TRANSFERABILITY_KEYS
        _require(not unknown, f"analysis.transferability: unknown key(s) {', '.join(sorted(unknown))}")
        loading = [s for s in strategies if STRATEGIES[s].load]
        strategy = str(settings.get("strategy") or ("encoder" if "encoder" in loading or not loading else loading[0]))
        _require(strategy in STRATEGIES and STRATEGIES[strategy].load,
                 f"analysis.transferability.strategy: {strategy!r} must be a strategy that loads pretrained weights "
                 f"({', '.join(n for n, s in STRATEGIES.items() if s.load)})")
        fraction = _number(settings.get("fraction") or (min(fractions) if fractions else 1.0),
                           "analysis.transferability.fraction")
        _check_fractions([fraction], target, "analysis.transferability")
        analysis["transferability"] = {"strategy": strategy, "fraction": fraction}
    return analysis


def _check_comparisons(raw: Any, stages: list[dict], strategies: list[str]) -> list[tuple[str, str]]:
    """`comparisons`: [[arm, reference], ...]; an arm is a strategy of the grid or `stage/strategy`."""
    if raw is None:
        return []
    _require(isinstance(raw, list), "comparisons: must be a list of [arm, reference] pairs")
    names = {stage["name"] for stage in stages} | {NO_SOURCE}
    pairs = []
    for index, pair in enumerate(raw):
        _require(isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(a, str) for a in pair)
                 and pair[0] != pair[1], f"comparisons[{index}]: expected [arm, reference], two different names")
        for arm in pair:
            stage, _, strategy = arm.rpartition("/")
            _require(strategy in strategies and (not stage or stage in names),
                     f"comparisons[{index}]: {arm!r} is not an arm of this study (a strategy of finetune.strategies, "
                     f"optionally as stage/strategy with a stage of: {', '.join(sorted(names))})")
        pairs.append((pair[0], pair[1]))
    return pairs


def _check_power(raw: Any, strategies: list[str]) -> dict:
    """The `power` block: run_sd > 0, at least one of effect / equivalence_margin (> 0), alpha in (0, 1),
    equivalence a list of strategies of the grid; {} when absent."""
    if raw is None:
        return {}
    _require(isinstance(raw, dict), f"power: must be a mapping of {', '.join(sorted(POWER_KEYS))}, got {raw!r}")
    unknown = set(raw) - POWER_KEYS
    _require(not unknown, f"power: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(POWER_KEYS))}")
    out: dict[str, Any] = {}
    for key, default in (("run_sd", None), ("effect", None), ("equivalence_margin", None), ("reference_dice", None),
                         ("alpha", 0.05)):
        value = raw.get(key, default)
        if value is None:
            continue
        number = _number(value, f"power.{key}")
        interval = {"alpha": "(0, 1)", "reference_dice": "(0, 1]"}.get(key, "(0, ∞)")
        inside = {"alpha": number < 1, "reference_dice": number <= 1}.get(key, True)
        _require(number == number and 0 < number and inside and number != float("inf"),
                 f"power.{key}: must be a number in {interval}, got {value!r}")
        out[key] = number
    _require("run_sd" in out, "power.run_sd: required (the seed-to-seed sd of one arm's mean Dice at convergence)")
    _require("effect" in out or "equivalence_margin" in out,
             "power: give `effect` (a difference to detect) or `equivalence_margin` (an equivalence to show), or both")
    equivalence = raw.get("equivalence", ["decoder"] if "decoder" in strategies else [])
    _require(isinstance(equivalence, list) and all(isinstance(s, str) and s in strategies for s in equivalence),
             f"power.equivalence: a list of strategies of finetune.strategies, got {equivalence!r}")
    _require(not equivalence or "equivalence_margin" in out or "equivalence" not in raw,
             "power.equivalence: needs power.equivalence_margin")
    out["equivalence"] = list(equivalence) if "equivalence_margin" in out else []
    return out


def parse_study(content: dict, base: str | Path = ".", data_root: str | None = None,
                source_file: str | None = None, trusted: bool = False) -> StudySpec:
    """Validate a study's content; `data_root` (from the command line) binds the target manifest's data.

    Unless `trusted`, no value that reaches `monai.bundle run` may be config syntax ($, @, %)."""
    from medtransfer.pretraining import OBJECTIVES
    from medtransfer.transfer import STRATEGIES

    base = Path(base)
    _require(isinstance(content, dict), "a study file must be a YAML mapping")
    unknown = set(content) - TOP_KEYS
    _require(not unknown, f"unknown study key(s): {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(TOP_KEYS))}")
    _require(bool(content.get("name")), "the study needs a `name`")
    _check_name(content["name"], "name")
    bundle_root = _resolve_bundle(content, base, trusted)
    train = yaml.safe_load(registry.train_config(bundle_root).read_text())
    spatial_dims = int(train.get("spatial_dims", content.get("spatial_dims", 2)))
    if "spatial_dims" in content:
        _require(_number(content["spatial_dims"], "spatial_dims", int) == spatial_dims,
                 f"spatial_dims {content['spatial_dims']} does not match bundle {bundle_root.name} ({spatial_dims}D)")
    bundle_keys = set(train)
    wiring = bundle_root / registry.PRETRAIN  # shared by every objective overlay
    overlays = [registry.pretrain_overlay(bundle_root, objective) for objective in registry.pretrain_objectives(bundle_root)]
    for path in [wiring, *overlays] if wiring.is_file() else overlays:
        bundle_keys |= {k for k in (yaml.safe_load(path.read_text()) or {}) if "#" not in k and not k.startswith("+")}
    settings = _bind_plan(_check_settings(content.get("settings"), "settings", bundle_keys), base, "settings")
    _refuse_config_syntax(settings, "settings", trusted)

    manifests: dict[str, ManifestInfo] = {}
    target_name = str(content.get("data_manifest") or train.get("data_manifest"))
    target = _open_manifest_info(target_name, data_root or content.get("data_root"), spatial_dims, base)
    manifests[target_name] = target
    for split, role in (("validation", "picks each fine-tune's best epoch"), ("test", "gives the Dice a study reports")):
        _require(bool(target.content[split]),
                 f"data manifest {target_name!r} ({target.path}): the {split} split is empty, but it {role}; rebuild "
                 f"the manifest with `medtransfer data manifest --{split}-fraction 0.2` (a value in (0, 1))")

    stages: list[dict] = []
    checkpoint_sources: list[dict] = []
    for index, raw in enumerate(content.get("pretraining") or []):
        where = f"pretraining[{index}]"
        _require(isinstance(raw, dict), f"{where}: must be a mapping")
        if "checkpoint" in raw:
            checkpoint_sources.append(_checkpoint_source(raw, where, base))
            continue
        unknown = set(raw) - STAGE_KEYS
        _require(not unknown, f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        objective = raw.get("objective")
        _require(objective in OBJECTIVES, f"{where}: unknown objective {objective!r}; one of {', '.join(OBJECTIVES)}")
        _require(objective in registry.pretrain_objectives(bundle_root),
                 f"{where}: bundle {bundle_root.name} has no {registry.PRETRAIN_DIR}/{objective}.yaml")
        source = str(raw.get("data_manifest") or target_name)
        if source not in manifests:
            # the command line's data root also serves a source that lives in it as a folder of its own name
            # (a folder of data sets, see medtransfer.data.open)
            shared_root = data_root or content.get("data_root")
            in_collection = bool(shared_root) and (Path(shared_root).expanduser() / source).is_dir()
            root = raw.get("data_root") or (shared_root if source == target_name or in_collection else None)
            manifests[source] = _open_manifest_info(source, root, spatial_dims, base)
        fraction = _number(raw.get("fraction", 1.0), f"{where}.fraction")
        _check_fractions([fraction], manifests[source], where)
        stage_settings = _bind_plan(_check_settings(raw.get("settings"), f"{where}.settings", bundle_keys), base,
                                    f"{where}.settings")
        _refuse_config_syntax(stage_settings, f"{where}.settings", trusted)
        objective_config = {**yaml.safe_load(registry.pretrain_wiring(bundle_root).read_text()),
                            **yaml.safe_load(registry.pretrain_overlay(bundle_root, objective).read_text())}
        resolved = {**train, **objective_config, **settings, **stage_settings}
        max_epochs = int(static_value(resolved, "max_epochs"))
        stage = {
            "objective": objective,
            "name": _check_name(raw.get("name") or objective, f"{where}.name"),
            "data_manifest": source,
            "fraction": fraction,
            "seed": _number(raw.get("seed", 0), f"{where}.seed", int),
            "label_map": _check_label_map(raw.get("label_map"), f"{where}.label_map"),
            "target_labels": raw.get("target_labels"),  # "allowed": may learn from target labels (leakage.py)
            "settings": stage_settings,
            "max_epochs": max_epochs,  # where pretrained.pt comes from
            "checkpoint_epochs": sorted({int(e) for e in resolved.get("checkpoint_epochs") or [] if int(e) <= max_epochs}
                                        | {max_epochs}),
        }
        _require(stage["target_labels"] in (None, "allowed"),
                 f"{where}: target_labels must be `allowed` or absent, not {stage['target_labels']!r}")
        _require(stage["name"] != NO_SOURCE, f"{where}: {NO_SOURCE!r} is reserved for runs without a source")
        _require(stage["name"] not in {s["name"] for s in stages},
                 f"{where}: two pretraining stages named {stage['name']!r}; give one a `name`")
        stages.append(stage)

    finetune = content.get("finetune") or {}
    _require(isinstance(finetune, dict), "finetune: must be a mapping")
    unknown = set(finetune) - FINETUNE_KEYS
    _require(not unknown, f"finetune: unknown key(s) {', '.join(sorted(unknown))}")
    _require(isinstance(finetune.get("strategies") or [], list), "finetune.strategies: must be a list")
    strategies = [str(s) for s in finetune.get("strategies") or []]
    for strategy in strategies:
        _require(strategy in STRATEGIES, f"finetune: unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
        _require(strategy in registry.transfer_strategies(bundle_root),
                 f"finetune: bundle {bundle_root.name} has no {registry.TRANSFER_DIR}/{strategy}.yaml")
    _require(len(set(strategies)) == len(strategies), "finetune: a strategy is listed twice")
    fractions = _numbers(finetune.get("fractions"), "finetune.fractions")
    _check_fractions(fractions, target, "finetune")
    seeds = _numbers(finetune.get("seeds"), "finetune.seeds", int)
    names = [source["name"] for source in stages + checkpoint_sources]
    twice = sorted({name for name in names if names.count(name) > 1})
    _require(not twice, f"pretraining: two sources named {', '.join(twice)}; give one another `name`")
    analysis = _check_analysis(content.get("analysis"), stages, strategies, fractions, target)
    needs_source = [s for s in strategies if STRATEGIES[s].load]
    _require(not needs_source or stages or checkpoint_sources,
             f"finetune: strategies {', '.join(needs_source)} load pretrained weights but there is no pretraining stage")
    from medtransfer.study.cluster import parse_resources

    try:
        resources = parse_resources(content.get("resources"))
    except ValueError as error:
        raise StudyError(str(error)) from None
    spec = StudySpec(
        content=content,
        # where runs execute is not what they compute: other `resources` are the same study (as MACHINE_KEYS)
        content_hash=_hash({key: value for key, value in content.items() if key not in NOT_HASHED}, 16),
        name=str(content["name"]),
        bundle_root=bundle_root,
        target=target,
        stages=stages,
        strategies=strategies,
        fractions=fractions,
        seeds=seeds,
        settings=settings,
        finetune_settings=_bind_plan(_check_settings(finetune.get("settings"), "finetune.settings", bundle_keys), base,
                                     "finetune.settings"),
        source_file=source_file,
        manifests=manifests,
        analysis=analysis,
        trusted=trusted,
        comparisons=_check_comparisons(content.get("comparisons"), stages + checkpoint_sources, strategies),
        checkpoint_sources=checkpoint_sources,
        resources=resources,
        power=_check_power(content.get("power"), strategies),
    )
    check_grid_count(spec)  # a mistyped range of seeds is refused before a million runs are expanded
    runs = spec.expand()
    _require(any(run.kind == "finetune" for run in runs),
             "the grid produces zero fine-tuning runs: give finetune.strategies, fractions and seeds")
    for run in runs:  # everything a run passes to `monai.bundle run` (paths, label maps, settings)
        _refuse_config_syntax(run.args, f"run {run.run_id}", trusted)
    return spec


def load_study(path: str | Path, data_root: str | None = None, trusted: bool = False) -> StudySpec:
    """Read and validate a study file; every error is a StudyError raised before any training."""
    path = Path(path)
    _require(path.is_file(), f"study file not found: {path}")
    try:
        content = yaml.safe_load(path.read_bytes())
    except yaml.YAMLError as error:
        raise StudyError(f"{path}: not valid YAML: {error}") from None
    except OSError as error:
        raise StudyError(f"{path}: cannot read the study file ({error.strerror or error})") from None
    from medtransfer.data.paths import OutsideRootError

    try:
        return parse_study(content, base=path.parent, data_root=data_root, source_file=str(path.resolve()),
                           trusted=trusted)
    except (StudyError, OutsideRootError) as error:
        raise type(error)(f"{path}: {error}") from None


def bundle_command(run: Run, bundle_root: Path, output_dir: Path, source_checkpoint: Path | None = None,
                   overwrite: bool = False) -> list[str]:
    """The `python -m monai.bundle run ...` command of one run (each run is its own process)."""
    module = "monai.bundle"
    files = "[" + ",".join(repr(f) for f in run.config_files) + "]"
    command = [sys.executable, "-m", module, "run", "--config_file", files, "--bundle_root", str(bundle_root),
               "--output_dir", str(output_dir)]
    for key, value in run.args.items():
        if value is None:
            continue
        command += [f"--{key}", value if isinstance(value, str) else repr(value)]
    if source_checkpoint is not None:
        command += ["--source_checkpoint", str(source_checkpoint)]
    if overwrite:
        command += ["--overwrite", "True"]
    return command


MAX_RUNS = 100_000  # a study above this is a typo (a mistyped range of seeds), refused before it is expanded


class StudyTooLargeError(StudyError):
    """A study above the confirmation threshold, started without `--yes` and without a terminal to ask."""


def grid_count(spec: StudySpec) -> int:
    """Runs of the fine-tuning grid, counted without expanding it."""
    sources = len(spec.stages) + len(spec.checkpoint_sources) + 1
    return len(spec.stages) + len(spec.strategies) * sources * len(spec.fractions) * len(spec.seeds)


def check_grid_count(spec: StudySpec) -> None:
    """Refuse a grid above MAX_RUNS before it is expanded (that alone would take minutes)."""
    upper = grid_count(spec)
    if upper > MAX_RUNS:
        raise StudyTooLargeError(
            f"the grid has up to {upper:,} runs ({len(spec.strategies)} strategies × {len(spec.fractions)} fractions "
            f"× {len(spec.seeds):,} seeds per source), more than {MAX_RUNS:,} that a study may hold; check "
            "finetune.seeds and finetune.fractions")
