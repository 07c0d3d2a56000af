"""A study's `analysis` block: layer-wise CKA of every fine-tune, and checkpoint transferability vs Dice.

CKA (`analysis: {cka: true}`), after the runs: every finished fine-tune of the grid is compared, layer by
layer on a fixed seeded sample of target test images, with (Karimi et al.; Goerttler & Obermayer)
  - its starting weights (what transfer + fine-tuning changed: ≈ 1 where features were reused),
  - a random network of the same architecture (how far from chance each layer is),
  - the runs of the same cell with other seeds (how reproducible each layer is).
Results go to `runs/<id>/cka/cka.{csv,json,png}`; a run whose `cka.json` records the same weights, images
and seed partners is not recomputed. `summarise_cka` aggregates them for the report.

Transferability (`analysis: {transferability: ...}`): the pretraining runs score each scheduled checkpoint on
the target (TransferabilityScore handler → their run.json); the study fine-tunes from every checkpoint, and
`transferability_table` pairs each checkpoint's score with the mean test Dice reached from it, with the
Spearman correlation per pretraining stage and over all checkpoints (Hidy et al. 2024).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from medtransfer.study.folder import finished_record, read_json, run_dir
from medtransfer.study.spec import Run, StudySpec
from medtransfer.training.run_folder import RunFolder

logger = logging.getLogger("medtransfer.study")

CKA_FOLDER = "cka"
COMPARISONS = ("vs start", "vs random", "across seeds")
CKA_UNCERTAINTY = "jackknife-images-v1"  # each layer's CKA interval: delete-one-image jackknife (see layer_cka)


def _cell(run: Run) -> tuple:
    return run.objective, run.strategy, run.fraction, run.checkpoint_epoch


def _finished_finetunes(study_dir: Path, spec: StudySpec) -> list[tuple[Run, dict]]:
    out = []
    for run in spec.expand():
        if run.kind == "finetune" and run.checkpoint_epoch is None:
            record = finished_record(run, run_dir(study_dir, run))
            if record is not None:
                out.append((run, record))
    return out


def run_cka_analysis(study_dir: str | Path, spec: StudySpec, progress: bool = True) -> dict[str, Any]:
    """Compute the per-run CKA files that are missing or stale. Returns {"computed", "reused", "failed": {id: error}}."""
    # torch/MONAI feature extraction is imported only when a study asks for CKA (keeps report/status light)
    from medtransfer.analysis.compare import image_batches, run_cka_summary, write_cka_report
    from medtransfer.data import open_manifest
    from medtransfer.networks.config import total_stride

    study_dir = Path(study_dir)
    settings = spec.analysis
    finished = _finished_finetunes(study_dir, spec)
    by_cell: dict[tuple, list[Run]] = defaultdict(list)
    for run, _ in finished:
        by_cell[_cell(run)].append(run)
    outcome: dict[str, Any] = {"computed": 0, "reused": 0, "failed": {}}
    todo = []
    for run, record in finished:
        partners = sorted(other.run_id for other in by_cell[_cell(run)] if other.run_id != run.run_id)
        key = {"model_sha256": record.get("model_sha256"), "partners": partners, "images": settings["cka_images"],
               "layers": settings["cka_layers"], "mode": settings["cka_mode"], "uncertainty": CKA_UNCERTAINTY}
        previous = read_json(run_dir(study_dir, run) / CKA_FOLDER / "cka.json")
        if previous and (previous.get("meta") or {}).get("key") == key:
            outcome["reused"] += 1
        else:
            todo.append((run, record, partners, key))
    if not todo:
        return outcome
    manifest = open_manifest(spec.target.path, data_root=spec.target.data_root)
    batches_by_shape: dict[tuple, list] = {}
    bar = tqdm(todo, desc=f"CKA {spec.name}", unit="run", disable=not progress, dynamic_ncols=True)
    for run, record, partners, key in bar:
        folder = run_dir(study_dir, run)
        try:
            config = record.get("config", {})
            size = tuple(int(v) for v in config.get("patch_size") or [])
            divisor = total_stride(config)
            if size not in batches_by_shape:  # the same seeded test images for every run
                batches_by_shape[size] = image_batches(manifest, "test", spatial_size=list(size) or None,
                                                       batch_size=8, max_images=settings["cka_images"], seed=0,
                                                       divisor=divisor)
            result = run_cka_summary(folder, batches_by_shape[size], layers=settings["cka_layers"],
                                     mode=settings["cka_mode"],
                                     other_seed_runs=[run_dir(study_dir, p) for p in partners])
            write_cka_report(result, folder / CKA_FOLDER, title=f"{run.run_id}: layer CKA",
                             meta={"key": key, "run_id": run.run_id, "objective": run.objective,
                                   "strategy": run.strategy, "fraction": run.fraction, "seed": run.seed,
                                   "n_images": settings["cka_images"], "split": "test"})
            outcome["computed"] += 1
        except Exception as error:  # one run's analysis failing must not lose the others'
            logger.warning("CKA of %s failed: %s", run.run_id, error)
            outcome["failed"][run.run_id] = f"{type(error).__name__}: {error}"
    bar.close()
    return outcome


def summarise_cka(study_dir: str | Path, spec: StudySpec) -> list[dict]:
    """Mean CKA per (objective, strategy, fraction, comparison, layer) over the cell's seeds (and seed pairs),
    with 95 % intervals over the test images (delete-one-image jackknife).

    Every run of a study is compared on the same seeded images in the same minibatches, so jackknife
    replicate i of every run and level leaves out the same image: the replicates are averaged across the
    cell's runs (and, for ``part_*``, across the part's levels), which is the jackknife of the averaged
    CKA, and the interval is :func:`~medtransfer.analysis.cka.jackknife_interval` of those averages. It
    reflects the sampling of images, with the cell's seeds held fixed. Columns ``ci_low``,
    ``ci_high``: the layer's mean; ``part_cka``, ``part_ci_low``, ``part_ci_high``: the mean over the levels
    of the row's part (encoder/decoder) in that cell and comparison. Intervals are None for runs computed
    without replicates (older cka.json files)."""
    import math

    import numpy as np
    import torch  # the CKA stack (torch) only when a study has an analysis block

    from medtransfer.analysis.cka import jackknife_interval
    from medtransfer.analysis.compare import CKA_CI_LEVEL

    values: dict[tuple, list[float]] = defaultdict(list)
    draws: dict[tuple, list] = defaultdict(list)
    parts: dict[str, str] = {}
    order: dict[str, int] = {}
    for run, _ in _finished_finetunes(Path(study_dir), spec):
        report = read_json(run_dir(study_dir, run) / CKA_FOLDER / "cka.json")
        if not report:
            continue
        for comparison, rows in (report.get("comparisons") or {}).items():
            group = "across seeds" if comparison.startswith("vs seed") else comparison
            for row in rows:
                if row.get("cka") is None:
                    continue
                key = (run.objective, run.strategy, run.fraction, group, row["layer"])
                values[key].append(float(row["cka"]))
                draws[key].append(row.get("cka_jackknife") or None)
                parts[row["layer"]] = row.get("part")
                order.setdefault(row["layer"], len(order))

    def mean_replicates(lists: list) -> np.ndarray | None:
        if not lists or any(d is None for d in lists) or len({len(d) for d in lists}) != 1:
            return None
        return np.mean(np.array(lists, dtype=np.float64), axis=0)  # None (undefined) → nan

    def interval(point: float, replicates: np.ndarray | None) -> tuple:
        if replicates is None:
            return None, None
        low, high = jackknife_interval(point, torch.from_numpy(replicates), CKA_CI_LEVEL)
        return (low if math.isfinite(low) else None), (high if math.isfinite(high) else None)

    layer_draws = {key: mean_replicates(d) for key, d in draws.items()}
    by_part: dict[tuple, list] = defaultdict(list)
    for key in values:
        by_part[(*key[:4], parts[key[4]])].append(key)
    part_stats = {}
    for part_key, keys in by_part.items():
        stacked = [layer_draws[k] for k in keys]
        replicates = None if any(d is None for d in stacked) else np.mean(stacked, axis=0)
        point = sum(sum(values[k]) / len(values[k]) for k in keys) / len(keys)
        part_stats[part_key] = (point, *interval(point, replicates))
    table = []
    for (objective, strategy, fraction, group, layer), cka in values.items():
        low, high = interval(sum(cka) / len(cka), layer_draws[(objective, strategy, fraction, group, layer)])
        part_cka, part_low, part_high = part_stats[(objective, strategy, fraction, group, parts[layer])]
        table.append({"objective": objective, "strategy": strategy, "fraction": fraction, "comparison": group,
                      "layer": layer, "part": parts[layer], "cka": sum(cka) / len(cka), "ci_low": low,
                      "ci_high": high, "n": len(cka), "part_cka": part_cka, "part_ci_low": part_low,
                      "part_ci_high": part_high, "layer_index": order[layer]})
    table.sort(key=lambda r: (r["objective"] != "none", r["objective"], r["strategy"], r["fraction"],
                              COMPARISONS.index(r["comparison"]) if r["comparison"] in COMPARISONS else 9,
                              r["layer_index"]))
    return table


def transferability_table(study_dir: str | Path, spec: StudySpec) -> dict[str, Any] | None:
    """Checkpoint scores next to the Dice fine-tuning reached from them, and Spearman correlations.

    Returns None without `analysis.transferability`. Otherwise {"strategy", "fraction", "rows": [{stage,
    epoch, robustness, logme, dice, n_runs}], "spearman": [{stage ("all" = pooled), score, rho, p_value, n}]}.
    Dice is the mean over the seeds' runs of each run's own mean test Dice (run.json metrics.mean_dice)."""
    # scipy/torch (checkpoint scores) are imported only for a study with a transferability block
    from medtransfer.analysis.checkpoint_scores import spearman_with_dice

    settings = spec.analysis.get("transferability")
    if not settings:
        return None
    study_dir = Path(study_dir)
    runs = spec.expand()
    pretrain = {run.objective: run for run in runs if run.kind == "pretrain"}
    final_epoch = {stage["name"]: stage["max_epochs"] for stage in spec.stages}
    dice: dict[tuple, list[float]] = defaultdict(list)
    for run in runs:
        if run.kind != "finetune" or run.strategy != settings["strategy"] or run.fraction != settings["fraction"]:
            continue
        if run.objective not in pretrain:
            continue
        record = finished_record(run, run_dir(study_dir, run))
        mean_dice = ((record or {}).get("metrics") or {}).get("mean_dice")
        if mean_dice is not None:
            epoch = run.checkpoint_epoch if run.checkpoint_epoch is not None else final_epoch[run.objective]
            dice[(run.objective, epoch)].append(float(mean_dice))
    rows = []
    for stage, pre in pretrain.items():
        record = RunFolder(run_dir(study_dir, pre)).record or {}
        for entry in (record.get("transferability") or {}).get("checkpoints") or []:
            runs_dice = dice.get((stage, int(entry["epoch"])), [])
            rows.append({"stage": stage, "epoch": int(entry["epoch"]), "robustness": entry.get("robustness"),
                         "logme": entry.get("logme"), "dice": sum(runs_dice) / len(runs_dice) if runs_dice else None,
                         "n_runs": len(runs_dice)})
    spearman = []
    for stage in [*pretrain, "all"]:
        subset = [r for r in rows if stage == "all" or r["stage"] == stage]
        for score in ("robustness", "logme"):
            result = spearman_with_dice({(r["stage"], r["epoch"]): r[score] for r in subset},
                                        {(r["stage"], r["epoch"]): r["dice"] for r in subset}, score_key=score)
            spearman.append({"stage": stage, "score": score, "rho": result["rho"], "p_value": result["p_value"],
                             "n": result["n"]})
    return {**settings, "rows": rows, "spearman": spearman}
