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

Strategies that load nothing (scratch, random_encoder_frozen) do not depend on a pretraining stage: they
run once per fraction × seed (objective "none"). Every run id ends with 8 hex digits hashing the run's full
parameters (shared settings, the data manifest's content, and for fine-tunes the pretraining run id), so a
changed configuration gives new ids and results of different configurations are never mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLES_DIR = REPO_ROOT / "bundles"

TOP_KEYS = {"name", "description", "spatial_dims", "bundle", "data_manifest", "data_root", "settings", "pretraining",
            "finetune", "analysis"}
ANALYSIS_KEYS = {"cka", "cka_images", "cka_layers", "cka_mode", "transferability"}
TRANSFERABILITY_KEYS = {"strategy", "fraction"}
STAGE_KEYS = {"objective", "name", "data_manifest", "data_root", "fraction", "seed", "label_map", "settings"}
FINETUNE_KEYS = {"strategies", "fractions", "seeds", "settings"}
# Bundle keys the study sets itself, per run: not allowed in `settings`.
RESERVED_SETTINGS = {"output_dir", "data_manifest", "data_root", "fraction", "seed", "strategy", "source_checkpoint",
                     "objective", "label_map", "bundle_root", "overwrite"}
NO_SOURCE = "none"


class StudyError(ValueError):
    """The study file (or the study folder) cannot be used as given; raised before any training starts."""


def _hash(obj: Any, n: int = 8) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", str(text)).strip("_") or "x"


def _fraction_text(fraction: float) -> str:
    from medtransfer.data.manifest import fraction_key

    return fraction_key(fraction)


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

    @property
    def max_epochs(self) -> int | None:
        value = self.args.get("max_epochs")
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

    # Expansion ----------------------------------------------------------------------------------------------
    def expand(self) -> list[Run]:
        """Pretraining runs first, then fine-tunes; ids are stable across calls and machines."""
        from medtransfer.transfer import STRATEGIES

        configs = self.bundle_root / "configs"
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
                "settings": settings,
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
                      (str(configs / "train.yaml"), str(configs / "pretrain.yaml"),
                       str(configs / "pretrain" / f"{stage['objective']}.yaml")),
                      args, params, source=manifest.name)
            stage_runs[stage["name"]] = run
            runs.append(run)
        settings = {**self.settings, **self.finetune_settings}
        for strategy in self.strategies:
            sources = [NO_SOURCE] if not STRATEGIES[strategy].load else [stage["name"] for stage in self.stages]
            for source in sources:
                for fraction in self.fractions:
                    for seed in self.seeds:
                        runs.append(self._finetune_run(source, stage_runs.get(source), strategy, fraction, seed,
                                                       settings))
        runs += self._checkpoint_runs(stage_runs, settings)
        return runs

    def _finetune_run(self, source: str, pre: Run | None, strategy: str, fraction: float, seed: int, settings: dict,
                      checkpoint_epoch: int | None = None, source_file: str = "pretrained.pt") -> Run:
        """One fine-tune; its id hashes everything it depends on (a checkpoint fine-tune also its epoch)."""
        params = {
            "kind": "finetune",
            "bundle": self.bundle_root.name,
            "data_manifest": self.target.name,
            "manifest_digest": self.target.digest,
            "strategy": strategy,
            "fraction": fraction,
            "seed": seed,
            "settings": settings,
            "pretraining_run": pre.run_id if pre else None,
        }
        label = _slug(source)
        if checkpoint_epoch is not None:
            params["source_checkpoint_epoch"] = checkpoint_epoch
            label += f"-e{checkpoint_epoch}"
        run_id = f"ft-{label}-{strategy}-f{_fraction_text(fraction)}-s{seed}-{_hash(params)}"
        args = {**settings, "data_manifest": str(self.target.path), "fraction": fraction, "seed": seed}
        if self.target.data_root:
            args["data_root"] = self.target.data_root
        configs = self.bundle_root / "configs"
        return Run(run_id, "finetune", source, strategy, fraction, seed,
                   (str(configs / "train.yaml"), str(configs / "transfer" / f"{strategy}.yaml")), args, params,
                   depends_on=pre.run_id if pre else None, source_file=source_file,
                   checkpoint_epoch=checkpoint_epoch)

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
def _require(condition: bool, message: str) -> None:
    if not condition:
        raise StudyError(message)


def _resolve_bundle(content: dict, base: Path) -> Path:
    bundle = content.get("bundle") or f"binary_seg_{int(content.get('spatial_dims', 2))}d"
    candidates = [Path(bundle)] if Path(bundle).is_absolute() else [base / bundle, Path.cwd() / bundle,
                                                                       BUNDLES_DIR / bundle]
    for candidate in candidates:
        if (candidate / "configs" / "train.yaml").is_file():
            return candidate.resolve()
    known = sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / "configs" / "train.yaml").is_file())
    raise StudyError(f"unknown bundle {bundle!r}: not a bundle folder (configs/train.yaml); known: {', '.join(known)}")


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


def _check_settings(settings: Any, where: str, bundle_keys: set[str]) -> dict:
    settings = dict(settings or {})
    for key in settings:
        _require(key not in RESERVED_SETTINGS, f"{where}: {key!r} is set by the study itself, not in settings")
        _require(key in bundle_keys, f"{where}: unknown bundle setting {key!r}")
    return settings


def _check_fractions(fractions: list[float], info: ManifestInfo, where: str) -> None:
    for fraction in fractions:
        key = _fraction_text(fraction)
        _require(key in info.content["fractions"],
                 f"{where}: fraction {fraction} is not in manifest {info.name!r}; available: "
                 f"{', '.join(sorted(info.content['fractions'], key=float))}")


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
    analysis = {"cka": bool(raw.get("cka", False)), "cka_images": int(raw.get("cka_images", 32)),
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
        fraction = float(settings.get("fraction") or (min(fractions) if fractions else 1.0))
        _check_fractions([fraction], target, "analysis.transferability")
        analysis["transferability"] = {"strategy": strategy, "fraction": fraction}
    return analysis


def parse_study(content: dict, base: str | Path = ".", data_root: str | None = None,
                source_file: str | None = None) -> StudySpec:
    """Validate a study's content; `data_root` (from the command line) binds the target manifest's data."""
    from medtransfer.pretraining import OBJECTIVES
    from medtransfer.transfer import STRATEGIES

    base = Path(base)
    _require(isinstance(content, dict), "a study file must be a YAML mapping")
    unknown = set(content) - TOP_KEYS
    _require(not unknown, f"unknown study key(s): {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(TOP_KEYS))}")
    _require(bool(content.get("name")), "the study needs a `name`")
    bundle_root = _resolve_bundle(content, base)
    train = yaml.safe_load((bundle_root / "configs" / "train.yaml").read_text())
    spatial_dims = int(train.get("spatial_dims", content.get("spatial_dims", 2)))
    if "spatial_dims" in content:
        _require(int(content["spatial_dims"]) == spatial_dims,
                 f"spatial_dims {content['spatial_dims']} does not match bundle {bundle_root.name} ({spatial_dims}D)")
    bundle_keys = set(train)
    for path in [bundle_root / "configs" / "pretrain.yaml", *(bundle_root / "configs" / "pretrain").glob("*.yaml")]:
        bundle_keys |= {k for k in (yaml.safe_load(path.read_text()) or {}) if "#" not in k and not k.startswith("+")}
    settings = _check_settings(content.get("settings"), "settings", bundle_keys)

    manifests: dict[str, ManifestInfo] = {}
    target_name = str(content.get("data_manifest") or train.get("data_manifest"))
    target = _open_manifest_info(target_name, data_root or content.get("data_root"), spatial_dims, base)
    manifests[target_name] = target

    stages = []
    for index, raw in enumerate(content.get("pretraining") or []):
        where = f"pretraining[{index}]"
        _require(isinstance(raw, dict), f"{where}: must be a mapping")
        unknown = set(raw) - STAGE_KEYS
        _require(not unknown, f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        objective = raw.get("objective")
        _require(objective in OBJECTIVES, f"{where}: unknown objective {objective!r}; one of {', '.join(OBJECTIVES)}")
        _require((bundle_root / "configs" / "pretrain" / f"{objective}.yaml").is_file(),
                 f"{where}: bundle {bundle_root.name} has no configs/pretrain/{objective}.yaml")
        source = str(raw.get("data_manifest") or target_name)
        if source not in manifests:
            root = raw.get("data_root") or (data_root if source == target_name else None)
            manifests[source] = _open_manifest_info(source, root, spatial_dims, base)
        fraction = float(raw.get("fraction", 1.0))
        _check_fractions([fraction], manifests[source], where)
        stage_settings = _check_settings(raw.get("settings"), f"{where}.settings", bundle_keys)
        objective_config = {**yaml.safe_load((bundle_root / "configs" / "pretrain.yaml").read_text()),
                            **yaml.safe_load((bundle_root / "configs" / "pretrain" / f"{objective}.yaml").read_text())}
        resolved = {**train, **objective_config, **settings, **stage_settings}
        max_epochs = int(resolved["max_epochs"])
        stage = {
            "objective": objective,
            "name": str(raw.get("name") or objective),
            "data_manifest": source,
            "fraction": fraction,
            "seed": int(raw.get("seed", 0)),
            "label_map": raw.get("label_map"),
            "settings": stage_settings,
            "max_epochs": max_epochs,  # where pretrained.pt comes from
            "checkpoint_epochs": sorted({int(e) for e in resolved.get("checkpoint_epochs") or [] if int(e) <= max_epochs}
                                        | {max_epochs}),
        }
        _require(stage["name"] != NO_SOURCE, f"{where}: {NO_SOURCE!r} is reserved for runs without a source")
        _require(stage["name"] not in {s["name"] for s in stages},
                 f"{where}: two pretraining stages named {stage['name']!r}; give one a `name`")
        stages.append(stage)

    finetune = content.get("finetune") or {}
    _require(isinstance(finetune, dict), "finetune: must be a mapping")
    unknown = set(finetune) - FINETUNE_KEYS
    _require(not unknown, f"finetune: unknown key(s) {', '.join(sorted(unknown))}")
    strategies = [str(s) for s in finetune.get("strategies") or []]
    for strategy in strategies:
        _require(strategy in STRATEGIES, f"finetune: unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
        _require((bundle_root / "configs" / "transfer" / f"{strategy}.yaml").is_file(),
                 f"finetune: bundle {bundle_root.name} has no configs/transfer/{strategy}.yaml")
    _require(len(set(strategies)) == len(strategies), "finetune: a strategy is listed twice")
    fractions = [float(f) for f in finetune.get("fractions") or []]
    _check_fractions(fractions, target, "finetune")
    seeds = [int(s) for s in finetune.get("seeds") or []]
    analysis = _check_analysis(content.get("analysis"), stages, strategies, fractions, target)
    needs_source = [s for s in strategies if STRATEGIES[s].load]
    _require(not needs_source or stages,
             f"finetune: strategies {', '.join(needs_source)} load pretrained weights but there is no pretraining stage")
    spec = StudySpec(
        content=content,
        content_hash=_hash(content, 16),
        name=str(content["name"]),
        bundle_root=bundle_root,
        target=target,
        stages=stages,
        strategies=strategies,
        fractions=fractions,
        seeds=seeds,
        settings=settings,
        finetune_settings=_check_settings(finetune.get("settings"), "finetune.settings", bundle_keys),
        source_file=source_file,
        manifests=manifests,
        analysis=analysis,
    )
    _require(any(run.kind == "finetune" for run in spec.expand()),
             "the grid produces zero fine-tuning runs: give finetune.strategies, fractions and seeds")
    return spec


def load_study(path: str | Path, data_root: str | None = None) -> StudySpec:
    """Read and validate a study file; every error is a StudyError raised before any training."""
    path = Path(path)
    _require(path.is_file(), f"study file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise StudyError(f"{path}: not valid YAML: {error}") from None
    try:
        return parse_study(content, base=path.parent, data_root=data_root, source_file=str(path.resolve()))
    except StudyError as error:
        raise StudyError(f"{path}: {error}") from None


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
