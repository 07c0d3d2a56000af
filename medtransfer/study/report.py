"""A study's report from its finished runs: results.csv (tidy), summary.md (statistics) and figures/.

Statistics:
- The unit of observation is a test case, or for slice data sets (cases with a `volume`, written by
  `medtransfer data slices`) a test *volume*: its slices' Dice are averaged first, because slices of one
  patient are not independent observations (treating them as such would make every p-value too small).
- Dice per objective × strategy × fraction: mean ± sd and the 95% CI of the mean (t distribution) over all
  (unit, seed) observations.
- Each strategy against `scratch` at the same fraction: paired Wilcoxon signed-rank test over (unit, seed)
  pairs, Holm-corrected over all comparisons of the study.
- Convergence: the first epoch whose validation Dice reaches 90% of the run's final validation Dice.
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
from medtransfer.study.analysis import COMPARISONS, summarise_cka, transferability_table
from medtransfer.study.figures import write_figures
from medtransfer.study.folder import STATUS_FILE, finished_record, load_study_dir, read_json, run_dir
from medtransfer.study.spec import NO_SOURCE, Run, StudySpec

CASE_METRICS = ("dice", "hd95", "surface_dice", "volume_pred", "volume_label")
COLUMNS = ("study", "run_id", "objective", "source", "strategy", "fraction", "seed", "checkpoint_epoch", "case",
           "volume", *CASE_METRICS, "best_epoch", "epochs_to_90", "wall_time_seconds")
BASELINE = "scratch"
CONVERGENCE_LEVEL = 0.9


# Statistics -----------------------------------------------------------------------------------------------
def holm(p_values: Iterable[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1); None/NaN stay None."""
    values = list(p_values)
    valid = [(p, i) for i, p in enumerate(values) if p is not None and not math.isnan(p)]
    m = len(valid)
    adjusted: list[float | None] = [None] * len(values)
    running = 0.0
    for rank, (p, index) in enumerate(sorted(valid)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def mean_ci(values: Iterable[float], level: float = 0.95) -> dict[str, float | int | None]:
    """Mean, sd and the `level` confidence interval of the mean (t distribution); NaNs are dropped."""
    from scipy import stats

    data = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = int(data.size)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci_low": None, "ci_high": None}
    mean = float(data.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "ci_low": None, "ci_high": None}
    sd = float(data.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half}


def paired_wilcoxon(a: dict, b: dict) -> dict[str, Any]:
    """Wilcoxon signed-rank test of a − b over the keys both have (pairs with a NaN are dropped)."""
    from scipy import stats

    keys = sorted(k for k in set(a) & set(b) if not (math.isnan(a[k]) or math.isnan(b[k])))
    diff = np.asarray([a[k] - b[k] for k in keys], dtype=float)
    out: dict[str, Any] = {"n_pairs": len(keys), "mean_diff": float(diff.mean()) if len(keys) else None,
                           "median_diff": float(np.median(diff)) if len(keys) else None, "statistic": None, "p": None}
    if len(keys) < 2:
        return out
    if np.all(diff == 0):
        out.update(statistic=0.0, p=1.0)
        return out
    result = stats.wilcoxon(diff)
    out.update(statistic=float(result.statistic), p=float(result.pvalue))
    return out


def epochs_to_fraction(val_history: list[dict], level: float = CONVERGENCE_LEVEL) -> int | None:
    """First epoch whose validation Dice is ≥ `level` × the final validation Dice."""
    history = [(int(h["epoch"]), h["val_dice"]) for h in val_history or [] if h.get("val_dice") is not None]
    if not history:
        return None
    final = history[-1][1]
    for epoch, value in history:
        if value >= level * final:
            return epoch
    return history[-1][0]  # pragma: no cover - the final epoch always qualifies


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
    for run in runs:
        record = finished_record(run, run_dir(study_dir, run))
        if record is None:
            entry = status.get(run.run_id) or {}
            problems.append({"run_id": run.run_id, "state": entry.get("state", "pending") if entry.get("state") !=
                             "finished" else "unverified", "error": entry.get("error")})
            continue
        if run.kind != "finetune":
            continue
        if run.checkpoint_epoch is None:  # the grid; checkpoint fine-tunes only feed the transferability table
            records[run.run_id] = {"run": run, "record": record}
        to90 = epochs_to_fraction(record.get("val_history") or [])
        for case in record.get("per_case") or []:
            row = {"study": spec.name, "run_id": run.run_id, "objective": run.objective,
                   "source": sources.get(run.depends_on, NO_SOURCE) if run.depends_on else NO_SOURCE,
                   "strategy": run.strategy, "fraction": run.fraction, "seed": run.seed,
                   "checkpoint_epoch": "" if run.checkpoint_epoch is None else run.checkpoint_epoch,
                   "case": case.get("case"), "volume": volume_of.get(case.get("case"), ""),
                   "best_epoch": record.get("best_epoch"), "epochs_to_90": to90,
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


def analyse(rows: list[dict], records: dict[str, dict]) -> dict[str, Any]:
    """The numbers summary.md and the figures show."""
    per_unit: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))  # cell -> {(unit, seed): [dice]}
    for row in rows:
        if row.get("checkpoint_epoch") not in (None, ""):
            continue
        unit = row.get("volume") or row["case"]  # slices of one volume are one observation
        per_unit[(row["objective"], row["strategy"], row["fraction"])][(unit, row["seed"])].append(row["dice"])
    dice: dict[tuple, dict] = {cell: {key: _nanmean(values) for key, values in units.items()}
                               for cell, units in per_unit.items()}
    table = []
    for key in sorted(dice, key=lambda k: (k[0] != NO_SOURCE, k[0], k[1], k[2])):
        seeds = {seed for _, seed in dice[key]}
        table.append({"objective": key[0], "strategy": key[1], "fraction": key[2], "n_seeds": len(seeds),
                      **mean_ci(dice[key].values())})
    tests = []
    for key in sorted(dice, key=lambda k: (k[0], k[1], k[2])):
        objective, strategy, fraction = key
        if strategy == BASELINE:
            continue
        baseline = dice.get((NO_SOURCE, BASELINE, fraction))
        if baseline is None:
            continue
        tests.append({"objective": objective, "strategy": strategy, "fraction": fraction,
                      **paired_wilcoxon(dice[key], baseline)})
    for test, adjusted in zip(tests, holm([t["p"] for t in tests])):
        test["p_holm"] = adjusted
    curves: dict[tuple, list[list[float]]] = defaultdict(list)
    convergence: dict[tuple, list[int]] = defaultdict(list)
    for item in records.values():
        run, record = item["run"], item["record"]
        key = (run.objective, run.strategy, run.fraction)
        history = record.get("val_history") or []
        curves[key].append([h["val_dice"] for h in history])
        to90 = epochs_to_fraction(history)
        if to90 is not None:
            convergence[key].append(to90)
    unit = "volume" if any(row.get("volume") for row in rows) else "case"
    return {"table": table, "tests": tests, "curves": dict(curves), "convergence": dict(convergence), "unit": unit}


# Markdown -------------------------------------------------------------------------------------------------
def _f(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _p(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"


def summary_markdown(spec: StudySpec, analysis: dict, problems: list[dict], n_runs: int, figures: list[str],
                     wall_seconds: float) -> str:
    lines = [f"# Study `{spec.name}`", ""]
    stages = ", ".join(f"{s['name']} ({s['objective']} on {s['data_manifest']})" for s in spec.stages)
    lines += [f"- study file: `{spec.source_file}` (content hash `{spec.content_hash}`)",
              f"- bundle: `{spec.bundle_root.name}`; target data: `{spec.target.name}`; "
              f"pretraining: {stages or 'none'}",
              f"- runs: {n_runs - len(problems)} of {n_runs} finished; Σ fine-tune wall time {wall_seconds / 60:.1f} min",
              f"- written {time.strftime('%Y-%m-%d %H:%M:%S')}", ""]
    unit = "test volume" if analysis.get("unit") == "volume" else "test case"
    per_volume = ("A slice data set: each volume's slice Dice are averaged first (slices of one patient are not "
                  "independent observations). ") if unit == "test volume" else ""
    lines += ["## Test Dice per strategy × fraction", "",
              f"{per_volume}Mean ± sd over all ({unit}, seed) observations; 95% CI of the mean from the t distribution. "
              f"Objective `{NO_SOURCE}`: runs that load no pretrained weights.", "",
              "| objective | strategy | fraction | seeds | n | Dice mean ± sd | 95% CI |",
              "|---|---|---:|---:|---:|---|---|"]
    for row in analysis["table"]:
        lines.append(f"| {row['objective']} | {row['strategy']} | {row['fraction']:g} | {row['n_seeds']} | {row['n']} | "
                     f"{_f(row['mean'])} ± {_f(row['sd'])} | [{_f(row['ci_low'])}, {_f(row['ci_high'])}] |")
    lines += ["", f"## Against `{BASELINE}` (paired Wilcoxon signed-rank, Holm-corrected)", "",
              f"Pairs are ({unit}, seed) at the same fraction; Δ = strategy − {BASELINE}. "
              f"Holm correction over all {len(analysis['tests'])} comparisons.", ""]
    if analysis["tests"]:
        lines += ["| objective | strategy | fraction | pairs | mean Δ | median Δ | W | p | p (Holm) | |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for t in analysis["tests"]:
            mark = "*" if t.get("p_holm") is not None and t["p_holm"] < 0.05 else ""
            lines.append(f"| {t['objective']} | {t['strategy']} | {t['fraction']:g} | {t['n_pairs']} | "
                         f"{_f(t['mean_diff'])} | {_f(t['median_diff'])} | {_f(t['statistic'], 1)} | {_p(t['p'])} | "
                         f"{_p(t.get('p_holm'))} | {mark} |")
        lines += ["", "\\* Holm-adjusted p < 0.05."]
    else:
        lines.append(f"No comparisons: `{BASELINE}` or the other strategies have no finished runs.")
    lines += ["", f"## Convergence: epochs to {int(CONVERGENCE_LEVEL * 100)}% of the final validation Dice", "",
              "| objective | strategy | fraction | runs | epochs mean ± sd |", "|---|---|---:|---:|---|"]
    for key in sorted(analysis["convergence"], key=lambda k: (k[0] != NO_SOURCE, k[0], k[1], k[2])):
        values = analysis["convergence"][key]
        stats = mean_ci(values)
        lines.append(f"| {key[0]} | {key[1]} | {key[2]:g} | {len(values)} | {_f(stats['mean'], 1)} ± "
                     f"{_f(stats['sd'], 1)} |")
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


def _cka_markdown(table: list[dict]) -> list[str]:
    if not table:
        return []
    lines = ["", "## Layer CKA (mean over seeds; per-run files in runs/<id>/cka/)", "",
             "Linear CKA per U-Net level on a fixed sample of test images: *vs start* = the fine-tuned network "
             "against the weights it started from (1 = the layer did not change its representation), *vs random* "
             "= against a randomly initialised network, *across seeds* = between runs of the same cell. "
             "Columns: mean over the encoder / decoder levels.", "",
             "| objective | strategy | fraction | " + " | ".join(f"{c} enc | {c} dec" for c in COMPARISONS) + " |",
             "|---|---|---:|" + "---:|---:|" * len(COMPARISONS)]
    cells: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))
    for row in table:
        cells[(row["objective"], row["strategy"], row["fraction"])][(row["comparison"], row["part"])].append(row["cka"])
    for (objective, strategy, fraction), values in cells.items():
        parts = []
        for comparison in COMPARISONS:
            for part in ("encoder", "decoder"):
                found = values.get((comparison, part))
                parts.append(_f(sum(found) / len(found)) if found else "–")
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
    """(Re)write results.csv, summary.md and figures/ from the finished runs of a study folder."""
    study_dir = Path(study_dir)
    spec = spec or load_study_dir(study_dir)
    rows, records, problems = collect(study_dir, spec)
    write_csv(study_dir / "results.csv", rows)
    analysis = analyse(rows, records)
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
    text = summary_markdown(spec, analysis, problems, n_runs, written, wall)
    atomic_write(study_dir / "summary.md", lambda stream: stream.write(text.encode()))
    return {"results": str(study_dir / "results.csv"), "summary": str(study_dir / "summary.md"),
            "figures": written, "n_rows": len(rows), "problems": problems}
