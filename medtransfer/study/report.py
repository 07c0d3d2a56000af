"""A study's report from its finished runs: results.csv (tidy), summary.md (statistics), findings.md (the seed
papers' claims, medtransfer.study.findings) and figures/.

Statistics (medtransfer.evaluation.statistics, whose docstring explains the choice and its calibration):
- The unit of observation is a test case, or for slice data sets (cases with a `volume`, written by
  `medtransfer data slices`) a test *volume*: its slices' Dice are averaged first, because slices of one
  patient are not independent observations.
- The unit of replication is the training run (seed): (case, seed) pairs are never treated as independent.
  Dice per objective × strategy × fraction: the mean of the per-seed mean Dice, with a t-interval over seeds.
- Each strategy against `scratch` at the same fraction (and any pair named in the study's `comparisons`):
  paired t-test over seeds of the per-seed mean difference over the shared test units, Holm-corrected over
  all comparisons of the study. Below 3 seeds: estimates only, "too few seeds for a seed-level test".
- Convergence: iterations to a common target per fraction × seed (95% of the best final validation Dice of
  any arm there; "not reached" otherwise) and the normalised area under the validation curve.
- With an `analysis` block (medtransfer.study.analysis): mean layer CKA per cell (vs start, vs random, across
  seeds) and each checkpoint's transferability score next to the Dice fine-tuning reached from it (Spearman).
  Fine-tunes from intermediate checkpoints appear in results.csv (column `checkpoint_epoch`) but not in the
  strategy × fraction statistics, which compare the grid's runs from the final pretrained weights only.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from medtransfer.atomic import atomic_write
from medtransfer.evaluation.statistics import (MIN_SEEDS, METHOD, TOO_FEW_SEEDS, cell_summary, compare_cells, holm,
                                               mean_ci, paired_over_seeds, unit_observations)
from medtransfer.study.analysis import COMPARISONS, summarise_cka, transferability_table
from medtransfer.study.figures import write_figures
from medtransfer.study.findings import findings, findings_markdown
from medtransfer.study.folder import STATUS_FILE, finished_record, load_study_dir, read_json, run_dir
from medtransfer.study.leakage import target_label_sentences
from medtransfer.study.spec import NO_SOURCE, Run, StudySpec

__all__ = ["holm", "mean_ci", "analyse", "collect", "write_report", "write_csv", "convergence", "validation_auc"]

CASE_METRICS = ("dice", "hd95", "surface_dice", "volume_pred", "volume_label")
CONVERGENCE_COLUMNS = ("convergence_target", "target_reached", "epochs_to_target", "iterations_to_target", "val_auc")
COLUMNS = ("study", "run_id", "objective", "source", "strategy", "fraction", "seed", "checkpoint_epoch", "case",
           "volume", *CASE_METRICS, "best_epoch", *CONVERGENCE_COLUMNS, "wall_time_seconds")
BASELINE = "scratch"
CONVERGENCE_LEVEL = 0.95  # of the best final validation Dice of any arm at the same fraction × seed


# Convergence ------------------------------------------------------------------------------------------------
def _history(val_history: list[dict] | None) -> list[tuple[int, float]]:
    return [(int(h["epoch"]), float(h["val_dice"])) for h in val_history or []
            if h.get("val_dice") is not None and math.isfinite(float(h["val_dice"]))]


def validation_auc(val_history: list[dict] | None) -> float | None:
    """Area under the validation-Dice curve (trapezoid over epochs) divided by the epoch span: the mean
    validation Dice over training, in [0, 1]; a single validation gives its value."""
    history = _history(val_history)
    if not history:
        return None
    epochs, values = np.asarray(history, dtype=float).T
    if len(epochs) == 1 or epochs[-1] == epochs[0]:
        return float(values[-1])
    return float(np.trapezoid(values, epochs) / (epochs[-1] - epochs[0]))


def convergence(val_history: list[dict] | None, target: float | None,
                iterations_per_epoch: int | None) -> dict[str, Any]:
    """First epoch (and training iteration) whose validation Dice reaches `target`; not reached → None."""
    history = _history(val_history)
    out = {"convergence_target": target, "target_reached": None, "epochs_to_target": None,
           "iterations_to_target": None, "val_auc": validation_auc(val_history)}
    if not history or target is None:
        return out
    epoch = next((e for e, value in history if value >= target), None)
    out["target_reached"] = epoch is not None
    if epoch is not None:
        out["epochs_to_target"] = epoch
        out["iterations_to_target"] = epoch * iterations_per_epoch if iterations_per_epoch else None
    return out


def budget_epochs(max_epochs: int | None) -> int:
    """The fixed small budget of the report: a fifth of the fine-tunes' maximum epochs (at least 1)."""
    return max(1, round((max_epochs or 5) / 5))


def dice_at(val_history: list[dict] | None, epoch: int) -> float | None:
    """Validation Dice at `epoch` (the last validation at or before it); None before the first validation."""
    values = [value for e, value in _history(val_history) if e <= epoch]
    return values[-1] if values else None


def budget_and_convergence(records: dict[str, dict], budget: int) -> list[dict]:
    """Per objective × strategy × fraction: validation Dice at the fixed small budget (`budget` epochs) against
    the best validation Dice under the whole budget (at convergence: early stopping or the maximum epochs), each
    with the t-interval over seeds, Δ against scratch at the same fraction (paired t over seeds, Holm within this
    family), the median best epoch, and how many runs were still improving when the budget ended."""
    cells: dict[tuple, dict[str, dict]] = defaultdict(lambda: {"budget": {}, "best": {}, "best_epoch": [],
                                                               "improving": 0, "unconverged": 0, "runs": 0})
    for item in records.values():
        run, record = item["run"], item["record"]
        cell = cells[(run.objective, run.strategy, run.fraction)]
        history = _history(record.get("val_history"))
        if not history:
            continue
        cell["runs"] += 1
        at_budget = dice_at(record.get("val_history"), budget)
        if at_budget is not None:
            cell["budget"][("val", run.seed)] = at_budget
        cell["best"][("val", run.seed)] = max(value for _, value in history)
        best_epoch = max(history, key=lambda h: h[1])[0]
        cell["best_epoch"].append(best_epoch)
        stopped = bool((record.get("early_stopping") or {}).get("stopped_early"))
        still_improving = not stopped and best_epoch == history[-1][0]
        cell["improving"] += int(still_improving)
        # run.json["converged"] (planned runs) is the record's own verdict; older runs: the best-at-last-epoch rule
        converged = (record.get("converged") or {}).get("value")
        cell["unconverged"] += int(not converged) if converged is not None else int(still_improving)
    rows = []
    for key in sorted(cells, key=lambda k: (k[0] != NO_SOURCE, k[0], k[1] != BASELINE, k[1], k[2])):
        cell = cells[key]
        if not cell["runs"]:
            continue
        baseline = cells.get((NO_SOURCE, BASELINE, key[2]))
        row = {"objective": key[0], "strategy": key[1], "fraction": key[2], "runs": cell["runs"],
               "budget": cell_summary(cell["budget"]), "best": cell_summary(cell["best"]),
               "best_epoch_median": float(np.median(cell["best_epoch"])), "improving": cell["improving"],
               "unconverged": cell["unconverged"],
               "baseline_unconverged": baseline["unconverged"] if baseline is not None else 0}
        if baseline is not None and key[1] != BASELINE:
            row["budget_vs_scratch"] = paired_over_seeds(cell["budget"], baseline["budget"])
            row["best_vs_scratch"] = paired_over_seeds(cell["best"], baseline["best"])
        rows.append(row)
    for kind in ("budget_vs_scratch", "best_vs_scratch"):
        tested = [row[kind] for row in rows if kind in row]
        for test, adjusted in zip(tested, holm(t["p"] for t in tested)):
            test["p_holm"] = adjusted
    return rows


def _iterations_per_epoch(run: Run, record: dict) -> int | None:
    value = (record.get("config") or {}).get("iterations_per_epoch") or run.args.get("iterations_per_epoch")
    if value:
        return int(value)
    if record.get("iterations") and record.get("epochs"):
        return int(record["iterations"]) // int(record["epochs"])
    return None


def convergence_targets(finished: Iterable[tuple[Run, dict]], level: float = CONVERGENCE_LEVEL) -> dict[tuple, float]:
    """{(fraction, seed): level × the best final validation Dice of any grid arm at that fraction and seed}."""
    best: dict[tuple, float] = {}
    for run, record in finished:
        history = _history(record.get("val_history"))
        if run.checkpoint_epoch is None and history:
            key = (run.fraction, run.seed)
            best[key] = max(best.get(key, -math.inf), history[-1][1])
    return {key: level * value for key, value in best.items()}


# Collection -----------------------------------------------------------------------------------------------
def collect(study_dir: Path, spec: StudySpec) -> tuple[list[dict], dict[str, dict], list[dict]]:
    """(rows of results.csv, finished fine-tune records by run id, problems [{run_id, state, error}])."""
    status = (read_json(Path(study_dir) / STATUS_FILE) or {}).get("runs", {})
    runs = spec.expand()
    sources = {run.run_id: run.source for run in runs if run.kind == "pretrain"}
    volume_of = {case["id"]: case["volume"] for case in spec.target.content.get("test", []) if case.get("volume")}
    rows: list[dict] = []
    records: dict[str, dict] = {}
    problems: list[dict] = []
    finished: list[tuple[Run, dict]] = []
    for run in runs:
        record = finished_record(run, run_dir(study_dir, run))
        if record is None:
            entry = status.get(run.run_id) or {}
            problems.append({"run_id": run.run_id, "state": entry.get("state", "pending") if entry.get("state") !=
                             "finished" else "unverified", "error": entry.get("error")})
            continue
        if run.kind != "finetune":
            continue
        finished.append((run, record))
        if run.checkpoint_epoch is None:  # the grid; checkpoint fine-tunes only feed the transferability table
            records[run.run_id] = {"run": run, "record": record}
    targets = convergence_targets(finished)
    for run, record in finished:
        speed = convergence(record.get("val_history"), targets.get((run.fraction, run.seed)),
                            _iterations_per_epoch(run, record))
        if run.run_id in records:
            records[run.run_id]["convergence"] = speed
        for case in record.get("per_case") or []:
            row = {"study": spec.name, "run_id": run.run_id, "objective": run.objective,
                   "source": sources.get(run.depends_on, NO_SOURCE) if run.depends_on else NO_SOURCE,
                   "strategy": run.strategy, "fraction": run.fraction, "seed": run.seed,
                   "checkpoint_epoch": "" if run.checkpoint_epoch is None else run.checkpoint_epoch,
                   "case": case.get("case"), "volume": volume_of.get(case.get("case"), ""),
                   "best_epoch": record.get("best_epoch"), **speed,
                   "wall_time_seconds": record.get("wall_time_seconds")}
            for metric in CASE_METRICS:
                value = case.get(metric)
                row[metric] = float("nan") if value is None else float(value)
            rows.append(row)
    return rows, records, problems


def write_csv(path: Path, rows: list[dict], columns: Iterable[str] = COLUMNS) -> None:
    """A tidy CSV (NaN written as an empty cell), atomically; `columns` default: results.csv's."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    data = buffer.getvalue().encode()
    atomic_write(path, lambda stream: stream.write(data))


def arm_label(objective: str, strategy: str) -> str:
    return strategy if objective == NO_SOURCE else f"{objective}/{strategy}"


def analyse(rows: list[dict], records: dict[str, dict], comparisons: Iterable[tuple[str, str]] = (),
            budget: int | None = None) -> dict[str, Any]:
    """The numbers summary.md and the figures show; `comparisons`: extra (arm, reference arm) pairs; `budget`:
    the fixed small budget in epochs (budget_epochs of the fine-tunes' max_epochs when None)."""
    grid = [row for row in rows if row.get("checkpoint_epoch") in (None, "")]
    cells = unit_observations(grid)  # slices of one volume are one observation
    order = sorted(cells, key=lambda k: (k[0] != NO_SOURCE, k[0], k[1] != BASELINE, k[1], k[2]))
    table = [{"objective": key[0], "strategy": key[1], "fraction": key[2], **cell_summary(cells[key])}
             for key in order]
    compared = compare_cells(cells, BASELINE, comparisons)
    curves: dict[tuple, list[list[float]]] = defaultdict(list)
    speed: dict[tuple, list[dict]] = defaultdict(list)
    for item in records.values():
        run, record = item["run"], item["record"]
        key = (run.objective, run.strategy, run.fraction)
        curves[key].append([h["val_dice"] for h in record.get("val_history") or []])
        if item.get("convergence") and item["convergence"]["val_auc"] is not None:
            speed[key].append(item["convergence"])
    unit = "volume" if any(row.get("volume") for row in rows) else "case"
    seeds = {row["seed"] for row in grid}
    if budget is None:
        budget = budget_epochs(max((item["run"].max_epochs or 0 for item in records.values()), default=None))
    return {"cells": cells, "table": table, "tests": compared["comparisons"], "skipped": compared["skipped"],
            "family": compared["family"], "n_seeds": len(seeds), "curves": dict(curves), "convergence": dict(speed),
            "unit": unit, "budget_epochs": budget, "budget": budget_and_convergence(records, budget)}


# Markdown -------------------------------------------------------------------------------------------------
def _f(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _p(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"


def study_file_label(source_file: str | None) -> str:
    """The study file as summary.md names it: relative to the git root of its folder (the study's checkout),
    else its own folder (the bare file name); never an absolute path of the machine that ran it."""
    if not source_file:
        return "unknown"
    path = Path(source_file)
    for folder in path.parents:
        if (folder / ".git").exists():
            return path.relative_to(folder).as_posix()
    return path.name


def summary_markdown(spec: StudySpec, analysis: dict, problems: list[dict], n_runs: int, figures: list[str],
                     wall_seconds: float, data_notes: Iterable[str] = ()) -> str:
    """`data_notes`: sentences on what the sources saw of the target (leakage.target_label_sentences)."""
    lines = [f"# Study `{spec.name}`", ""]
    stages = ", ".join([f"{s['name']} ({s['objective']} on {s['data_manifest']})" for s in spec.stages]
                       + [f"{s['name']} (checkpoint file {Path(s['checkpoint']).name})"
                          for s in spec.checkpoint_sources])
    lines += [f"- study file: `{study_file_label(spec.source_file)}` (content hash `{spec.content_hash}`)",
              f"- bundle: `{spec.bundle_root.name}`; target data: `{spec.target.name}`; "
              f"pretraining: {stages or 'none'}",
              f"- runs: {n_runs - len(problems)} of {n_runs} finished; Σ fine-tune wall time {wall_seconds / 60:.1f} min",
              f"- written {time.strftime('%Y-%m-%d %H:%M:%S')}", ""]
    notes = list(data_notes) + spec.not_planned()
    if notes:
        lines += ["**What the sources saw of the target, and what the grid leaves out:**", ""] + [f"- {note}" for note in notes] + [""]
    unit = "test volume" if analysis.get("unit") == "volume" else "test case"
    per_volume = ("A slice data set: each volume's slice Dice are averaged first (slices of one patient are not "
                  "independent observations). ") if unit == "test volume" else ""
    n_seeds = analysis.get("n_seeds", 0)
    too_few = n_seeds < MIN_SEEDS
    lines += [f"**Statistical method:** {METHOD} (scipy.stats.ttest_1samp of the per-seed differences, 95% t-interval); "
              f"the unit of replication is the training run (seed), each seed contributing the mean over the {unit}s "
              f"both arms share, never (case, seed) pairs as independent observations.", ""]
    if too_few:
        lines += [f"**This study has {n_seeds} seed{'s' if n_seeds != 1 else ''}: {TOO_FEW_SEEDS}** (one needs ≥ "
                  f"{MIN_SEEDS} seeds). The tables give estimates only: no confidence intervals and no p-values.", ""]
    lines += _power_markdown(spec)
    lines += ["## Test Dice per strategy × fraction", "",
              f"{per_volume}Dice: mean over seeds of each run's mean over its {unit}s; 95% CI: t-interval over the "
              f"per-seed means (none below {MIN_SEEDS} seeds). sd seeds: between runs; sd {unit}s: within a run "
              f"(mean over seeds). Objective `{NO_SOURCE}`: runs that load no pretrained weights.", "",
              f"| objective | strategy | fraction | seeds | {unit}s | Dice | sd seeds | sd {unit}s | 95% CI (seeds) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in analysis["table"]:
        interval = "–" if row["ci_low"] is None else f"[{_f(row['ci_low'])}, {_f(row['ci_high'])}]"
        lines.append(f"| {row['objective']} | {row['strategy']} | {row['fraction']:g} | {row['n_seeds']} | "
                     f"{row['n_units']} | {_f(row['mean'])} | {_f(row['sd_seeds'])} | {_f(row['sd_cases'])} | "
                     f"{interval} |")
    named = [f"{a} vs {b}" for a, b in getattr(spec, "comparisons", None) or []]
    lines += ["", f"## Against `{BASELINE}`" + (f" and the named pairs ({', '.join(named)})" if named else ""), "",
              f"Δ = strategy − reference at the same fraction: mean over seeds of the per-seed mean difference over the "
              f"{unit}s both runs share. {analysis.get('family', '')}.", ""]
    if analysis["tests"]:
        lines += ["| objective | strategy | fraction | vs | seeds | Δ | 95% CI | p | p (Holm) | per-seed Δ | |",
                  "|---|---|---:|---|---:|---:|---|---:|---:|---|---|"]
        for t in analysis["tests"]:
            mark = "*" if t.get("p_holm") is not None and t["p_holm"] < 0.05 else ""
            interval = "–" if t["ci_low"] is None else f"[{_f(t['ci_low'])}, {_f(t['ci_high'])}]"
            per_seed = ", ".join(f"{d:+.3f}" for d in t["per_seed"].values())
            lines.append(f"| {t['objective']} | {t['strategy']} | {t['fraction']:g} | {t['baseline']} | {t['n_seeds']} | "
                         f"{_f(t['estimate'])} | {interval} | {_p(t['p'])} | {_p(t.get('p_holm'))} | {per_seed} | "
                         f"{mark} |")
        untested = sorted({t["method"] for t in analysis["tests"] if t["p"] is None})
        lines += [""]
        if any(t["p"] is not None for t in analysis["tests"]):
            lines.append("\\* Holm-adjusted p < 0.05.")
        lines += [f"- no p-value: {reason}" for reason in untested]
    else:
        lines.append(f"No comparisons: `{BASELINE}` or the other strategies have no finished runs.")
    lines += [f"- {message}" for message in analysis.get("skipped") or []]
    lines += ["", "## Convergence: iterations to a common target", "",
              f"Target per fraction × seed: {int(CONVERGENCE_LEVEL * 100)}% of the best final validation Dice that any "
              f"arm reached at that fraction and seed, so a flat or collapsing run cannot look fast. Iterations: median "
              f"over seeds, a run that never reached the target counting as slowest (\"not reached\" when that is the "
              f"median). AUC: area under the validation curve over the epoch span (= mean validation Dice during "
              f"training; higher = better earlier).", "",
              "| objective | strategy | fraction | runs | reached target | iterations to target (median) | "
              "val AUC mean ± sd |", "|---|---|---:|---:|---:|---:|---|"]
    for key in sorted(analysis["convergence"], key=lambda k: (k[0] != NO_SOURCE, k[0], k[1] != BASELINE, k[1], k[2])):
        runs = analysis["convergence"][key]
        reached = [r for r in runs if r["target_reached"]]
        steps = sorted(r["iterations_to_target"] if r["target_reached"] and r["iterations_to_target"] is not None
                       else math.inf for r in runs)
        median = float(np.median(steps)) if steps else math.inf
        auc = mean_ci(r["val_auc"] for r in runs)
        lines.append(f"| {key[0]} | {key[1]} | {key[2]:g} | {len(runs)} | {len(reached)} of {len(runs)} | "
                     f"{'not reached' if not math.isfinite(median) else f'{median:g}'} | "
                     f"{_f(auc['mean'])} ± {_f(auc['sd'])} |")
    lines += _budget_markdown(analysis.get("budget") or [], analysis.get("budget_epochs"))
    lines += _cka_markdown(analysis.get("cka") or [])
    lines += _transferability_markdown(analysis.get("transferability"))
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}](figures/{Path(f).name})" for f in figures]
    lines += ["", "## Runs not finished", ""]
    if problems:
        lines += ["| run | state | error (last line) |", "|---|---|---|"]
        for problem in problems:
            last = (problem.get("error") or "").strip().splitlines()
            text = last[-1].replace("|", "\\|")[:200] if last else ""
            lines.append(f"| `{problem['run_id']}` | {problem['state']} | {text} |")
        lines += ["", "Full tracebacks: `medtransfer study status STUDY_DIR --errors` and each run's `log.txt`."]
    else:
        lines.append("None: every run finished.")
    return "\n".join(lines) + "\n"


def _power_markdown(spec: StudySpec) -> list[str]:
    """The seeds-by-power calculation of the study file's `power` block (medtransfer.study.size)."""
    from medtransfer.study.size import comparison_powers

    rows = comparison_powers(spec)
    if not rows:
        return []
    power = spec.power
    lines = [f"**Seeds by power** (the study file's `power` block: run sd {power['run_sd']:g} Dice at convergence, "
             f"so the sd of a per-seed difference of two arms is √2 × {power['run_sd']:g}; alpha {power['alpha']:g} "
             f"per comparison, before Holm; medtransfer.evaluation.power):", "",
             "| comparison | seeds | power | seeds for power 0.8 |", "|---|---:|---:|---:|"]
    lines += [f"| {row['what']} | {row['n_seeds']} | {row['power']:.2f} | {row['seeds_needed'] or '–'} |"
              for row in rows]
    return lines + [""]


def _interval(summary: dict) -> str:
    if summary.get("mean") is None:
        return "–"
    if summary.get("ci_low") is None:
        return _f(summary["mean"])
    return f"{_f(summary['mean'])} [{_f(summary['ci_low'])}, {_f(summary['ci_high'])}]"


def _delta(test: dict | None) -> str:
    if not test or test.get("estimate") is None:
        return "–"
    text = f"{test['estimate']:+.3f}"
    if test.get("ci_low") is not None:
        text += f" [{test['ci_low']:+.3f}, {test['ci_high']:+.3f}]"
    if test.get("p_holm") is not None:
        text += f", p<sub>Holm</sub> {_p(test['p_holm'])}" + ("*" if test["p_holm"] < 0.05 else "")
    return text


def _budget_markdown(rows: list[dict], budget: int | None) -> list[str]:
    if not rows:
        return []

    def mark(count: int) -> str:
        return " †" if count else ""

    improving = sum(row["improving"] for row in rows)
    unconverged = sum(row.get("unconverged", 0) for row in rows)
    total = sum(row["runs"] for row in rows)
    lines = ["", f"## Validation Dice at a fixed small budget ({budget} epochs) and at convergence", "",
             f"*At {budget} epochs*: each run's validation Dice after {budget} epochs. *At convergence*: its best "
             "validation Dice under the whole budget (fine-tunes stop on validation Dice with patience, under the "
             "same maximum for every arm). Mean over seeds [95% t-interval over seeds]; Δ against `scratch` at the "
             "same fraction, paired over seeds (Holm within each column's family). *Still improving*: runs whose best "
             "validation came at their last epoch without an early stop, so the budget, not convergence, ended them. "
             "Validation Dice, not test Dice: the test split is evaluated once, on the best-validation weights. "
             "*Not converged*: runs whose run.json says `converged: false` (the smoothed validation Dice was still "
             "rising when the budget ended). A value or a comparison marked † involves such a run (in the arm or in "
             "scratch): it is a value at the budget, not at convergence.", "",
             f"**{unconverged} of {total} fine-tunes did not converge.**",
             f"**{improving} of {total} fine-tunes were still improving when the budget ended.**"
             + (" Where most were, 'at convergence' means 'at the maximum budget'." if improving > total / 2 else ""),
             "",
             f"| objective | strategy | fraction | runs | at {budget} epochs | Δ vs scratch | at convergence | "
             "Δ vs scratch | best epoch (median) | still improving | not converged |",
             "|---|---|---:|---:|---|---|---|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['objective']} | {row['strategy']} | {row['fraction']:g} | {row['runs']} | "
                     f"{_interval(row['budget'])} | {_delta(row.get('budget_vs_scratch'))} | "
                     f"{_interval(row['best'])}{mark(row['unconverged'])} | "
                     f"{_delta(row.get('best_vs_scratch'))}{mark(row['unconverged'] + row['baseline_unconverged'])} | "
                     f"{row['best_epoch_median']:g} | {row['improving']} of {row['runs']} | "
                     f"{row['unconverged']} of {row['runs']} |")
    return lines


def _cka_markdown(table: list[dict]) -> list[str]:
    if not table:
        return []
    lines = ["", "## Layer CKA (mean over seeds; per-run files in runs/<id>/cka/)", "",
             "Linear CKA (minibatch estimator on the flattened feature maps) per U-Net level on a fixed sample of "
             "test images: *vs start* = the fine-tuned network against the weights it started from (1 = the layer "
             "did not change its representation), *vs random* = against a randomly initialised network, *across "
             "seeds* = between runs of the same cell. Columns: mean over the encoder / decoder levels, with a 95 % "
             "interval over the test images (delete-one-image jackknife, replicates averaged like the estimate; "
             "the cell's seeds held fixed; a bootstrap with replacement is biased for this U-statistic). "
             "RSA (Spearman correlation of correlation-distance RDMs) is computed on the same representation as the "
             "CKA (flattened maps and the same within-minibatch image pairs; pooled vectors in `pool` mode); it is "
             "in each run's cka.csv.", "",
             "| objective | strategy | fraction | " + " | ".join(f"{c} enc | {c} dec" for c in COMPARISONS) + " |",
             "|---|---|---:|" + "---:|---:|" * len(COMPARISONS)]
    cells: dict[tuple, dict] = defaultdict(dict)
    for row in table:
        cells[(row["objective"], row["strategy"], row["fraction"])][(row["comparison"], row["part"])] = row
    for (objective, strategy, fraction), values in cells.items():
        parts = []
        for comparison in COMPARISONS:
            for part in ("encoder", "decoder"):
                row = values.get((comparison, part))
                if row is None:
                    parts.append("–")
                elif row.get("part_ci_low") is None or row.get("part_ci_high") is None:
                    parts.append(_f(row["part_cka"]))
                else:
                    parts.append(f"{_f(row['part_cka'])} [{_f(row['part_ci_low'])}, {_f(row['part_ci_high'])}]")
        lines.append(f"| {objective} | {strategy} | {fraction:g} | " + " | ".join(parts) + " |")
    return lines


def _transferability_markdown(result: dict | None) -> list[str]:
    if not result:
        return []
    lines = ["", "## Transferability scores vs fine-tuned Dice", "",
             f"Every scheduled checkpoint of each pretraining run, scored on the target (robustness of Hidy et al.: "
             f"lower = more transferable; LogME: higher = better), then fine-tuned with `{result['strategy']}` at "
             f"fraction {result['fraction']:g} (Dice: mean over seeds of each run's mean test Dice).", "",
             "| pretraining | epoch | robustness | LogME | Dice | runs |", "|---|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['stage']} | {row['epoch']} | {_f(row['robustness'], 4)} | {_f(row['logme'], 4)} | "
                     f"{_f(row['dice'])} | {row['n_runs']} |")
    lines += ["", "| checkpoints of | score | Spearman ρ with Dice | p | n |", "|---|---|---:|---:|---:|"]
    for row in result["spearman"]:
        lines.append(f"| {row['stage']} | {row['score']} | {_f(row['rho'])} | {_p(row['p_value'])} | {row['n']} |")
    lines += ["", "A useful robustness score has ρ < 0 (lower score, higher Dice); a useful LogME has ρ > 0. "
                  "ρ needs ≥ 3 checkpoints with finished fine-tunes."]
    return lines


def write_report(study_dir: str | Path, spec: StudySpec | None = None, figures: bool = True) -> dict[str, Any]:
    """(Re)write results.csv, summary.md, findings.md and figures/ from the finished runs of a study folder."""
    study_dir = Path(study_dir)
    spec = spec or load_study_dir(study_dir)
    rows, records, problems = collect(study_dir, spec)
    write_csv(study_dir / "results.csv", rows)
    analysis = analyse(rows, records, getattr(spec, "comparisons", None) or ())
    if spec.analysis:
        analysis["cka"] = summarise_cka(study_dir, spec) if spec.analysis.get("cka") else []
        analysis["transferability"] = transferability_table(study_dir, spec)
        if analysis["cka"]:
            write_csv(study_dir / "cka_summary.csv", analysis["cka"], columns=list(analysis["cka"][0]))
    written: list[str] = []
    if figures and rows:
        written = write_figures(study_dir / "figures", analysis)
    n_runs = len(spec.expand())
    wall = sum(float(item["record"].get("wall_time_seconds") or 0.0) for item in records.values())
    text = summary_markdown(spec, analysis, problems, n_runs, written, wall, target_label_sentences(study_dir))
    atomic_write(study_dir / "summary.md", lambda stream: stream.write(text.encode()))
    claims = study_findings(spec, analysis)
    page = findings_markdown(spec.name, claims, study_file_label(spec.source_file))
    atomic_write(study_dir / "findings.md", lambda stream: stream.write(page.encode()))
    return {"results": str(study_dir / "results.csv"), "summary": str(study_dir / "summary.md"),
            "findings": str(study_dir / "findings.md"), "claims": claims,
            "figures": written, "n_rows": len(rows), "problems": problems}


def study_findings(spec: StudySpec, analysis: dict) -> list[dict]:
    """findings.md's rows (medtransfer.study.findings) from `analyse`'s cells, its not-converged count per arm
    and the transferability table."""
    unconverged = {(row["objective"], row["strategy"], row["fraction"]): row.get("unconverged", 0)
                   for row in analysis.get("budget") or []}
    stages = list(spec.stages) + [{"name": s["name"], "objective": None} for s in spec.checkpoint_sources]
    return findings(analysis["cells"], stages, getattr(spec, "power", None) or {}, unconverged,
                    analysis.get("transferability"))
