"""Statistics of transfer-learning studies: per-cell intervals and strategy-vs-baseline comparisons whose unit of
replication is the training run (seed), with the test cases averaged inside each run.

Why not (case, seed) pairs. Fine-tunes with different seeds differ by a run-level offset (another fraction
subset order, another initialisation, another path through the loss landscape); at low fractions a run-to-run
sd of 0.01–0.03 Dice is normal. Every test case of one run shares that offset, so the (case, seed) pairs are not
independent and a test over them (the old paired Wilcoxon) counts one lucky run as 100 pieces of evidence:
`benchmarks/statistics_calibration.py` (20 cases, 3 seeds, 2000 null studies) measures its false-positive rate at
0.05 nominal as 4.8 % with no run effect but 13.8 % at run sd 0.01 and 43.5 % at 0.03.

The method (`METHOD`): for each seed both arms have, the Dice difference is averaged over the test cases (slice
data sets: test volumes) that both arms have at that seed; the comparison is a one-sample t-test of those
per-seed differences against 0 with its t-interval (`scipy.stats.ttest_1samp`), i.e. the classical paired t-test
over seeds. Seeds are paired because the same seed gives both arms the same fraction subset and the same
initialisation of the parts that are not transferred. The t-test is exact when the per-seed differences are
normal (they are means over many cases, plus a run offset), whatever the case heterogeneity: additive case
difficulty cancels in the pairing and the case-to-case noise is inside each per-seed mean. The simulation in
`benchmarks/statistics_calibration.py` measures its false-positive rate at 4.5–5.7 % at run sd 0, 0.01 and
0.03 with 3 and 5 seeds (2000 simulated studies per setting). Scope: the test set is the one the study measured
(the question is "would new training runs of this strategy beat new runs of the baseline on this test set"); a
strategy effect that differs from case to case is part of the estimand (with a per-case effect of sd 0.02 whose
population mean is 0, the benchmark measures 5.3 %: at study sizes it is small next to the run variance).
Not chosen: a crossed mixed model (statsmodels MixedLM with variance components for case and seed) reports a
Wald z-test (reference 1.96) for a mean whose variance rests on 3–5 seed levels (t quantile 4.30 for 3 seeds),
which is anti-conservative by construction when the seed variance dominates; a cluster bootstrap over 3–5 seeds
has too few clusters to resample. The per-seed t-test has the exact reference distribution.

With fewer than `MIN_SEEDS` seeds no p-value and no interval are given (`TOO_FEW_SEEDS`): with two seeds the
between-run variance rests on one degree of freedom (the t quantile is 12.7), so any interval is either useless
or, when computed from the cases, invalid. The estimate is still reported.

Per-cell intervals (tables, figure error bars) use the same unit: the mean of the per-seed mean Dice with a
t-interval over seeds.

Holm's step-down correction runs over the family of every comparison in one analysis that has a p-value (each
strategy against the baseline at each pretraining source × fraction, plus any pairs named in the study file).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from statsmodels.stats.multitest import multipletests

from medtransfer.errors import MedtransferError

MIN_SEEDS = 3
LEVEL = 0.95
METHOD = "paired t-test over seeds"
TOO_FEW_SEEDS = "too few seeds for a seed-level test"
REQUIRED_COLUMNS = ("strategy", "fraction", "seed", "case", "dice")
OPTIONAL_COLUMNS = ("objective", "volume")
COMPARISON_COLUMNS = ("objective", "strategy", "fraction", "baseline", "estimate", "ci_low", "ci_high", "p", "p_holm",
                      "method")


class StatisticsError(MedtransferError, ValueError):
    """A results table (or a comparison asked of it) that cannot be analysed as given."""


# Elementary statistics ----------------------------------------------------------------------------------
def _finite(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def nanmean(values: Iterable[float]) -> float:
    finite = [v for v in values if _finite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def holm(p_values: Iterable[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (statsmodels' `multipletests(method="holm")`); None/NaN stay None."""
    values = list(p_values)
    index = [i for i, p in enumerate(values) if _finite(p)]
    adjusted: list[float | None] = [None] * len(values)
    if index:
        corrected = multipletests([float(values[i]) for i in index], method="holm")[1]
        for i, p in zip(index, corrected):
            adjusted[i] = float(p)
    return adjusted


def mean_ci(values: Iterable[float], level: float = LEVEL) -> dict[str, float | int | None]:
    """Mean, sd and the `level` confidence interval of the mean (t distribution) of independent values; NaNs are
    dropped. Only valid for independent observations (e.g. per-seed means), never for (case, seed) pairs."""
    from scipy import stats

    data = np.asarray([v for v in values if _finite(v)], dtype=float)
    n = int(data.size)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci_low": None, "ci_high": None}
    mean = float(data.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "ci_low": None, "ci_high": None}
    sd = float(data.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half}


def spearman_interval(rho: float | None, n: int, level: float = LEVEL) -> dict[str, float | None]:
    """`level` interval of a Spearman ρ over n pairs: Fisher z with Bonett & Wright's (2000) variance
    (1 + ρ²/2)/(n − 3); None below 4 pairs or for |ρ| = 1."""
    from scipy import stats

    if rho is None or not _finite(rho) or n < 4 or abs(rho) >= 1:
        return {"ci_low": None, "ci_high": None}
    half = float(stats.norm.ppf(0.5 + level / 2)) * math.sqrt((1 + rho ** 2 / 2) / (n - 3))
    return {"ci_low": math.tanh(math.atanh(rho) - half), "ci_high": math.tanh(math.atanh(rho) + half)}


def paired_wilcoxon(a: dict, b: dict) -> dict[str, Any]:
    """The OLD test: Wilcoxon signed-rank of a − b over every key both have, as if the keys were independent.

    Kept only so that `benchmarks/statistics_calibration.py` and the tests can show how anti-conservative it is
    over (case, seed) pairs; reports do not use it."""
    from scipy import stats

    keys = sorted((k for k in set(a) & set(b) if _finite(a[k]) and _finite(b[k])), key=str)
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


# Seed-level summaries -------------------------------------------------------------------------------------
def _seed_order(seeds) -> list:
    return sorted(seeds, key=lambda s: (not isinstance(s, (int, float)), s if isinstance(s, (int, float)) else str(s)))


def seed_means(observations: dict[tuple, float]) -> dict[Any, float]:
    """{seed: mean Dice over that seed's units} from {(unit, seed): Dice}; NaNs are dropped."""
    by_seed: dict[Any, list[float]] = defaultdict(list)
    for (_, seed), value in observations.items():
        if _finite(value):
            by_seed[seed].append(value)
    return {seed: sum(v) / len(v) for seed, v in ((s, by_seed[s]) for s in _seed_order(by_seed))}


def cell_summary(observations: dict[tuple, float], level: float = LEVEL) -> dict[str, Any]:
    """One strategy × fraction cell: the mean of per-seed mean Dice, the sd between seeds and the t-interval over
    seeds (none below MIN_SEEDS); `sd_cases` is the mean within-seed sd over units, for orientation."""
    means = seed_means(observations)
    stats = mean_ci(means.values(), level)
    units = {unit for unit, _ in observations}
    within = [np.std([v for (u, s), v in observations.items() if s == seed and _finite(v)], ddof=1)
              for seed in means if sum(1 for (u, s), v in observations.items() if s == seed and _finite(v)) > 1]
    out = {"n_seeds": len(means), "n_units": len(units), "mean": stats["mean"], "sd_seeds": stats["sd"],
           "sd_cases": float(np.mean(within)) if within else None, "ci_low": None, "ci_high": None,
           "seed_means": means}
    if len(means) >= MIN_SEEDS:
        out.update(ci_low=stats["ci_low"], ci_high=stats["ci_high"])
    return out


def per_seed_differences(arm: dict[tuple, float], baseline: dict[tuple, float]) -> tuple[dict[Any, float], int]:
    """({seed: mean of arm − baseline over the units both have at that seed}, units compared summed over seeds)."""
    per_seed: dict[Any, float] = {}
    n_units = 0
    for seed in _seed_order({s for _, s in arm} & {s for _, s in baseline}):
        shared = [u for (u, s) in arm if s == seed and (u, seed) in baseline
                  and _finite(arm[(u, seed)]) and _finite(baseline[(u, seed)])]
        if shared:
            per_seed[seed] = float(np.mean([arm[(u, seed)] - baseline[(u, seed)] for u in shared]))
            n_units += len(shared)
    return per_seed, n_units


def paired_over_seeds(arm: dict[tuple, float], baseline: dict[tuple, float], level: float = LEVEL) -> dict[str, Any]:
    """`arm` − `baseline` ({(unit, seed): Dice} each): the paired t-test over seeds (see the module docstring).

    Returns estimate (mean per-seed difference), ci_low/ci_high, p (None where no valid test exists), n_seeds,
    n_units (units compared, summed over seeds), per_seed {seed: difference} and method (what was done, or why
    no test)."""
    from scipy import stats

    per_seed, n_units = per_seed_differences(arm, baseline)
    diffs = np.asarray(list(per_seed.values()), dtype=float)
    out: dict[str, Any] = {"estimate": float(diffs.mean()) if diffs.size else None, "ci_low": None, "ci_high": None,
                           "p": None, "n_seeds": int(diffs.size), "n_units": n_units, "per_seed": per_seed}
    if diffs.size == 0:
        out["method"] = "no shared (case, seed) observations"
    elif diffs.size < MIN_SEEDS:
        out["method"] = (f"estimate only: {TOO_FEW_SEEDS} ({diffs.size} shared seed{'s' if diffs.size > 1 else ''}; "
                         f"needs ≥ {MIN_SEEDS})")
    elif float(diffs.std()) <= 1e-12 * max(1.0, float(np.abs(diffs).max())):  # t undefined (rounding aside)
        out["method"] = f"estimate only: the {diffs.size} per-seed differences are identical (no between-seed variation)"
    else:
        result = stats.ttest_1samp(diffs, 0.0)
        interval = result.confidence_interval(level)
        out.update(ci_low=float(interval.low), ci_high=float(interval.high), p=float(result.pvalue),
                   method=f"{METHOD} ({diffs.size} seeds)")
    return out


def equivalence_over_seeds(arm: dict[tuple, float], baseline: dict[tuple, float], margin: float,
                           alpha: float = 0.05) -> dict[str, Any]:
    """TOST of `arm` − `baseline` within ±`margin` over the same per-seed differences as `paired_over_seeds`:
    two one-sided t-tests at level `alpha` (statsmodels `ttost_paired`), p = the larger of the two; equivalent
    at `alpha` ⇔ the 1 − 2·alpha t-interval (ci_low, ci_high here) lies inside ±margin.

    Returns estimate, ci_low/ci_high (1 − 2·alpha), p (None where no valid test exists), n_seeds, n_units,
    per_seed, margin and method."""
    from statsmodels.stats.weightstats import ttost_paired

    out = paired_over_seeds(arm, baseline, level=1 - 2 * alpha)
    out["margin"] = margin
    if out["p"] is None:
        return out
    diffs = np.asarray(list(out["per_seed"].values()), dtype=float)
    p, _, _ = ttost_paired(diffs, np.zeros_like(diffs), -margin, margin)
    out.update(p=float(p), method=f"TOST within ±{margin:g} over seeds ({diffs.size} seeds)")
    return out


# Cells and comparison families ----------------------------------------------------------------------------
def unit_observations(rows: Iterable[dict]) -> dict[tuple, dict[tuple, float]]:
    """{(objective, strategy, fraction): {(unit, seed): Dice}}; a row's unit is its `volume` when it has one
    (slices of one volume are one observation: their Dice are averaged), else its `case`."""
    per_unit: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        unit = row.get("volume") or row["case"]
        per_unit[(row.get("objective") or "", row["strategy"], row["fraction"])][(unit, row["seed"])].append(row["dice"])
    return {cell: {key: nanmean(values) for key, values in units.items()} for cell, units in per_unit.items()}


def arm_name(objective: str, strategy: str, no_source: Iterable[str] = ("", "none")) -> str:
    return strategy if objective in no_source else f"{objective}/{strategy}"


def _baseline_cell(cells: dict, objective: str, baseline: str, fraction: float) -> tuple | None:
    """The baseline's cell at `fraction`: the same objective if it has one there, else the one objective the
    baseline has at that fraction (e.g. `scratch`, which loads nothing, under objective `none`)."""
    if (objective, baseline, fraction) in cells:
        return objective, baseline, fraction
    candidates = [c for c in cells if c[1] == baseline and c[2] == fraction]
    return candidates[0] if len(candidates) == 1 else None


def _resolve_arm(name: str, cells: dict) -> list[tuple[str, str]]:
    """(objective, strategy) arms a name means: `objective/strategy`, or a strategy (under every objective)."""
    objective, _, strategy = name.rpartition("/")
    arms = sorted({(c[0], c[1]) for c in cells if c[1] == strategy and (not objective or c[0] == objective)})
    if not arms:
        known = ", ".join(sorted({arm_name(c[0], c[1]) for c in cells}))
        raise StatisticsError(f"comparison arm {name!r} has no results; arms: {known}")
    return arms


def compare_cells(cells: dict[tuple, dict], baseline: str = "scratch", pairs: Iterable[tuple[str, str]] = (),
                  level: float = LEVEL) -> dict[str, Any]:
    """Every strategy against `baseline` at each (objective, fraction), plus `pairs` ((arm, reference arm) names as
    in `_resolve_arm`; a plain strategy name pairs within each objective); Holm over all comparisons with a p.

    Returns {"comparisons": [row per comparison, COMPARISON_COLUMNS + n_seeds, n_units, per_seed],
    "skipped": [messages for comparisons that could not be made], "family": a sentence naming the family}."""
    wanted: list[tuple[tuple, tuple]] = []
    skipped: list[str] = []
    if any(c[1] == baseline for c in cells):
        missing: dict[float, list[str]] = defaultdict(list)
        for cell in sorted(cells, key=lambda c: (c[0], c[1], c[2])):
            if cell[1] == baseline:
                continue
            reference = _baseline_cell(cells, cell[0], baseline, cell[2])
            if reference is None:
                missing[cell[2]].append(arm_name(cell[0], cell[1]))
            else:
                wanted.append((cell, reference))
        skipped += [f"baseline {baseline!r} has no results at fraction {fraction:g}: {', '.join(names)} not compared"
                    for fraction, names in sorted(missing.items())]
    else:
        skipped.append(f"baseline {baseline!r} has no results; strategies: "
                       f"{', '.join(sorted({c[1] for c in cells}))}")
    for name, reference_name in pairs:
        references = _resolve_arm(reference_name, cells)
        arms = _resolve_arm(name, cells)
        for objective, strategy in arms:
            matches = [r for r in references if r[0] == objective]
            # another objective's reference only when named explicitly, or when it lives where the compared
            # strategy does not (a strategy that loads nothing, e.g. random_encoder_frozen under `none`)
            if not matches and ("/" in reference_name or not {r[0] for r in references} & {a[0] for a in arms}):
                matches = references
            if not matches:
                skipped.append(f"{reference_name} has no results under {objective}: "
                               f"{arm_name(objective, strategy)} not compared with it")
                continue
            if len(matches) != 1:
                raise StatisticsError(f"comparison {name} vs {reference_name}: {reference_name!r} is ambiguous for "
                                      f"{arm_name(objective, strategy)}; name it as objective/strategy")
            for fraction in sorted({c[2] for c in cells if c[:2] == (objective, strategy)}):
                reference = (*matches[0], fraction)
                if reference not in cells:
                    skipped.append(f"{arm_name(*matches[0])} has no results at fraction {fraction:g}: "
                                   f"{arm_name(objective, strategy)} not compared with it there")
                elif ((objective, strategy, fraction), reference) not in wanted:
                    wanted.append(((objective, strategy, fraction), reference))
    rows = []
    for cell, reference in wanted:
        result = paired_over_seeds(cells[cell], cells[reference], level)
        rows.append({"objective": cell[0], "strategy": cell[1], "fraction": cell[2],
                     "baseline": arm_name(reference[0], reference[1]) if reference[0] != cell[0] else reference[1],
                     **result})
    for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = adjusted
    tested = sum(1 for r in rows if r["p"] is not None)
    family = (f"Holm over the {tested} comparison{'s' if tested != 1 else ''} with a p-value in this analysis "
              f"(each strategy against `{baseline}` at each pretraining source × fraction"
              + (", plus the named pairs" if pairs else "") + ")")
    return {"comparisons": rows, "skipped": skipped, "family": family}


# Tidy results tables ----------------------------------------------------------------------------------------
def read_results_table(path: str | Path) -> list[dict]:
    """A tidy CSV with columns strategy, fraction, seed, case, dice (objective and volume optional), validated.

    Raises StatisticsError naming the file and the problem: missing columns, non-numeric fractions, missing or
    non-finite or out-of-range Dice, duplicate (objective, strategy, fraction, seed, case) rows."""
    path = Path(path)
    if not path.is_file():
        raise StatisticsError(f"{path}: no such file")
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise StatisticsError(f"{path}: missing column(s) {', '.join(missing)}; expected columns: "
                                  f"{', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)}); "
                                  f"found: {', '.join(header) or 'none'}")
        raw = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not raw:
        raise StatisticsError(f"{path}: no rows")
    rows, bad_dice, bad_fraction = [], [], []
    for line, row in enumerate(raw, start=2):
        try:
            fraction = float(row["fraction"])
        except ValueError:
            bad_fraction.append(f"line {line}: {row['fraction']!r}")
            continue
        try:
            dice = float(row["dice"])
        except ValueError:
            dice = float("nan")
        if not (math.isfinite(dice) and 0.0 <= dice <= 1.0):
            bad_dice.append(f"line {line} ({row['strategy']}, {fraction:g}, seed {row['seed']}, {row['case']}): "
                            f"{row['dice'] or 'empty'!r}")
            continue
        seed = row["seed"]
        rows.append({"objective": row.get("objective", ""), "strategy": row["strategy"], "fraction": fraction,
                     "seed": int(seed) if seed.lstrip("-").isdigit() else seed, "case": row["case"],
                     "volume": row.get("volume", ""), "dice": dice,
                     "checkpoint_epoch": row.get("checkpoint_epoch", "")})  # a study's results.csv
    if bad_fraction:
        raise StatisticsError(f"{path}: {len(bad_fraction)} row(s) with a non-numeric fraction: "
                              + "; ".join(bad_fraction[:5]) + (" …" if len(bad_fraction) > 5 else ""))
    if bad_dice:
        raise StatisticsError(f"{path}: {len(bad_dice)} row(s) without a Dice in [0, 1] (NaN, empty or out of range); "
                              f"fix or remove them, a missing case is not guessed: " + "; ".join(bad_dice[:5])
                              + (" …" if len(bad_dice) > 5 else ""))
    counts: dict[tuple, int] = defaultdict(int)
    for row in rows:
        counts[(row["objective"], row["strategy"], row["fraction"], row["seed"], row["case"],
                row["checkpoint_epoch"])] += 1
    duplicates = [key for key, n in counts.items() if n > 1]
    if duplicates:
        shown = "; ".join(f"{arm_name(o, s)} fraction {f:g} seed {seed} case {c} (×{counts[(o, s, f, seed, c, e)]})"
                          for o, s, f, seed, c, e in duplicates[:5])
        raise StatisticsError(f"{path}: {len(duplicates)} duplicate (strategy, fraction, seed, case) row(s): {shown}"
                              + (" …" if len(duplicates) > 5 else ""))
    return rows


def analyse_table(rows: list[dict], baseline: str = "scratch", pairs: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """`medtransfer stats`: the study report's comparisons on a tidy table (rows as from read_results_table);
    rows of a study's checkpoint fine-tunes (`checkpoint_epoch` set) are left out, as in the study report."""
    from_checkpoints = sum(1 for row in rows if row.get("checkpoint_epoch") not in (None, ""))
    rows = [row for row in rows if row.get("checkpoint_epoch") in (None, "")]
    if not rows:
        raise StatisticsError("no rows left: every row is a checkpoint fine-tune (checkpoint_epoch set)")
    cells = unit_observations(rows)
    if not any(c[1] == baseline for c in cells):
        raise StatisticsError(f"baseline {baseline!r} is not in the table; strategies: "
                              f"{', '.join(sorted({c[1] for c in cells}))} (choose one with --baseline)")
    result = compare_cells(cells, baseline, pairs)
    notes = list(result["skipped"])
    if from_checkpoints:
        notes.append(f"{from_checkpoints} row(s) of checkpoint fine-tunes (checkpoint_epoch set) left out, as in "
                     f"the study report")
    seeds = {row["seed"] for row in rows}
    if len(seeds) < MIN_SEEDS:
        notes.append(f"{TOO_FEW_SEEDS}: the table has {len(seeds)} seed(s), a seed-level test needs ≥ {MIN_SEEDS}; "
                     f"estimates only (no CI, no p)")
    return {**result, "notes": notes, "unit": "volume" if any(row.get("volume") for row in rows) else "case"}


# Simulation (calibration) -----------------------------------------------------------------------------------
def simulated_results(rng: np.random.Generator, n_cases: int = 20, n_seeds: int = 3, run_sd: float = 0.0,
                      effect: float = 0.0, case_sd: float = 0.10, noise_sd: float = 0.05, shared_seed_sd: float = 0.02,
                      interaction_sd: float = 0.0, fraction: float = 0.1, base: float = 0.75) -> list[dict]:
    """A tidy results table of one simulated study: `scratch` and `encoder` at one fraction, `n_seeds` × `n_cases`.

    Dice = base + case difficulty (sd `case_sd`, shared by both arms) + seed effect shared by both arms of a seed
    (sd `shared_seed_sd`: the same fraction subset) + run offset per arm and seed (sd `run_sd`) + noise per
    (arm, case, seed) (sd `noise_sd`) + `effect` for `encoder` + a per-case strategy effect (sd `interaction_sd`,
    drawn per study: a population-level null with a non-zero mean effect on this test set)."""
    case = rng.normal(0.0, case_sd, n_cases)
    interaction = rng.normal(0.0, interaction_sd, n_cases) if interaction_sd else np.zeros(n_cases)
    rows = []
    for seed in range(n_seeds):
        shared = rng.normal(0.0, shared_seed_sd)
        for strategy, shift in (("scratch", np.zeros(n_cases)), ("encoder", effect + interaction)):
            offset = rng.normal(0.0, run_sd) if run_sd else 0.0
            dice = base + case + shared + offset + shift + rng.normal(0.0, noise_sd, n_cases)
            rows += [{"objective": "", "strategy": strategy, "fraction": fraction, "seed": seed, "case": f"c{i:03d}",
                      "volume": "", "dice": float(d)} for i, d in enumerate(dice)]
    return rows


def rejection_rates(rng: np.random.Generator, n_studies: int, alpha: float = 0.05, **setting) -> dict[str, Any]:
    """Share of `n_studies` simulated studies (`simulated_results(**setting)`) in which the old test (paired
    Wilcoxon over (case, seed) pairs) and the new one (paired t-test over seeds) give p < alpha; `new` is None
    where the new method gives no p (fewer than MIN_SEEDS seeds)."""
    old = new = tested = 0
    for _ in range(n_studies):
        cells = unit_observations(simulated_results(rng, **setting))
        arm, baseline = cells[("", "encoder", setting.get("fraction", 0.1))], cells[("", "scratch",
                                                                                     setting.get("fraction", 0.1))]
        p_old = paired_wilcoxon(arm, baseline)["p"]
        p_new = paired_over_seeds(arm, baseline)["p"]
        old += p_old is not None and p_old < alpha
        if p_new is not None:
            tested += 1
            new += p_new < alpha
    return {"old": old / n_studies, "new": new / tested if tested else None, "n_studies": n_studies}
