"""findings.md: the seed papers' claims, one row each, tested on a study's results (`medtransfer study report`).

Each row: the claim as the paper states it, the paper's own number where it gives one, our estimate with its
interval, the test with its Holm-adjusted p (Holm over the claims of this page that have a p), the power of that
test for the claim's stated effect with the seeds the study had, and a verdict (`VERDICTS`), or
`NOT_MEASURED` when the study has no arms for the claim.

Statistics are medtransfer.evaluation.statistics (the unit of replication is the seed; paired t over per-seed
differences, TOST over the same differences, Holm) and medtransfer.evaluation.power. Power uses the sd of the
per-seed quantity the test is made on as the study measured it (≥ MIN_SEEDS seeds), else the study file's
`power.run_sd` (√2·run_sd for a difference of two arms, √(1 + 0.9²)·run_sd for arm − 0.9·scratch, 2·run_sd for a
difference of two differences).

The claims (smallest / largest fraction of the grid = "low data" / "full data"; the source of a claim about "the
encoder" is the study's segmentation stage, else its first stage that has the arm):
1. Dippel et al.: encoder > scratch at low data (stated effect +0.03 Dice, or the `power.effect`).
2. Dippel et al.: decoder ≈ scratch: TOST within ±`power.equivalence_margin` (default ±0.03).
3. Dippel et al.: an encoder pretrained on segmentation (else reconstruction) > one pretrained on classification.
4. Karimi et al., with Hidy et al.'s numbers: a frozen random encoder keeps ≥ 90 % of scratch Dice (full data).
   Estimate: the per-seed ratio with its t-interval; test: random_encoder_frozen − 0.9 × scratch over seeds.
   Power for Hidy et al.'s middle value (93.5 %).
5. Dippel et al.: the encoder's benefit shrinks as the fraction grows: (encoder − scratch) at low data minus the
   same at full data, per seed.
6. Hidy et al.: the robustness score correlates negatively with fine-tuned Dice (Spearman over the checkpoints of
   every source, from `analysis.transferability`); power for ρ = −0.45.

Verdicts, in this order: "inconclusive: runs not converged" when a run of an arm involved says (run.json
`converged.value`, as the report counts it per arm) it did not converge; "reproduces" when the Holm p < alpha and
the estimate is on the claimed side; "contradicted" when the Holm p < alpha on the other side, or, for a claimed
effect size (claims 1, 3, 5, 6), when the 95 % interval excludes it (the data rule out an effect as large as
stated), or for claim 2 when the 90 % interval lies wholly outside the margin; otherwise inconclusive, split by
the test's power for the stated effect: "inconclusive at this power" (underpowered: power < POWER_GOAL, or no sd
to size it by; the power column says how much it had and how many seeds 0.8 needs) or "inconclusive, though
powered" (power ≥ POWER_GOAL: the study was large enough to see the stated effect, did not see it, and its interval
still holds both no effect and the stated one, so more seeds of the same design are not what it lacks; the
estimate and its interval say how large an effect the data leave possible). Power here is the design's power at
the sd the study measured, never "observed power" from the estimate. Claim 6's checkpoint fine-tunes are not in
the convergence count (the report does not count them).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from medtransfer.evaluation.power import (correlation_power, difference_power, seeds_for_difference,
                                          seeds_for_equivalence, tost_power)
from medtransfer.evaluation.statistics import (MIN_SEEDS, equivalence_over_seeds, holm, mean_ci,
                                               paired_over_seeds, spearman_interval)
from medtransfer.study.spec import NO_SOURCE

REPRODUCES = "reproduces"
CONTRADICTED = "contradicted"
UNDERPOWERED = "inconclusive at this power"
POWERED_NULL = "inconclusive, though powered"
NOT_CONVERGED = "inconclusive: runs not converged"
VERDICTS = (REPRODUCES, CONTRADICTED, UNDERPOWERED, POWERED_NULL, NOT_CONVERGED)
POWER_GOAL = 0.8  # a claim's test is "powered" when its power for the stated effect reaches this
NOT_MEASURED = "not measured by this study"
ALPHA = 0.05
EFFECT = 0.03  # Dice: the stated difference for "encoder > scratch at 0.05"
MARGIN = 0.03  # Dice: "decoder ≈ scratch" means within ±0.03
RATIO = 0.90  # "keeps ≥ 90 % of scratch"
RATIO_PAPER = (0.91, 0.96)  # Hidy et al.'s downstream_scores.csv, CNN U-Nets, pretraining length 0, frozen
RHO_PAPER = (-0.50, -0.45)  # Hidy et al.'s robustness score vs Dice at deep levels
# Claim 4's test: random_encoder_frozen − RATIO × scratch over seeds. Its per-seed sd is RATIO_SD_FACTOR × run sd (two
# independent runs, one scaled by RATIO); its stated effect is the paper's midpoint ratio above RATIO, in Dice.
RATIO_SD_FACTOR = math.sqrt(1 + RATIO ** 2)


def ratio_effect(scratch_dice: float) -> float:
    """Claim 4's stated effect in Dice at a scratch Dice of `scratch_dice` ((93.5 % − 90 %) × scratch)."""
    return (sum(RATIO_PAPER) / 2 - RATIO) * scratch_dice


DIPPEL = "Dippel et al. 2022"
KARIMI = "Karimi et al. 2021"
HIDY = "Hidy et al. 2024"


def _source(cells: dict, stages: list[dict], strategy: str, objectives: Iterable[str] = ("segmentation",)) -> str | None:
    """The stage whose `strategy` arm a claim uses: the first stage of `objectives` (in that order) with the arm,
    else (only for the default) the first stage with it."""
    having = [s for s in stages if any(c[0] == s["name"] and c[1] == strategy for c in cells)]
    for objective in objectives:
        for stage in having:
            if stage.get("objective") == objective:
                return stage["name"]
    return having[0]["name"] if having and tuple(objectives) == ("segmentation",) else None


def _sd(per_seed: dict, declared: float | None, factor: float) -> tuple[float | None, str]:
    values = [v for v in per_seed.values() if v is not None]
    if len(values) >= MIN_SEEDS and float(np.std(values, ddof=1)) > 0:
        return float(np.std(values, ddof=1)), "sd measured here"
    if declared:
        return factor * declared, "sd from the study file's power.run_sd"
    return None, "no sd to size it by"


def _row(number: int, claim: str, paper: str, paper_number: str, **values) -> dict[str, Any]:
    return {"number": number, "claim": claim, "paper": paper, "paper_number": paper_number, "arm": None,
            "reference": None, "fraction": None, "estimate": None, "ci_low": None, "ci_high": None, "kind": "difference",
            "method": None, "p": None, "p_holm": None, "n_seeds": 0, "power": None, "seeds_needed": None,
            "power_basis": None, "stated_effect": None, "side": +1, "unconverged": 0, "verdict": NOT_MEASURED, **values}


def _label(cell: tuple) -> str:
    return cell[1] if cell[0] == NO_SOURCE else f"{cell[0]}/{cell[1]}"


def _difference_row(row: dict, test: dict, arms: list[tuple], unconverged: dict, sd: tuple, effect: float) -> dict:
    value, basis = sd
    power = needed = None
    if value:
        power = difference_power(test["n_seeds"], value, effect, ALPHA)
        needed = seeds_for_difference(value, effect, ALPHA)
    row.update(estimate=test["estimate"], ci_low=test["ci_low"], ci_high=test["ci_high"], p=test["p"],
               method=test["method"], n_seeds=test["n_seeds"], power=power, seeds_needed=needed,
               power_basis=basis, stated_effect=effect, unconverged=sum(unconverged.get(a, 0) for a in arms))
    return row


def _contrast(arm: dict, reference: dict, factor: float = 1.0) -> dict:
    """{(unit, seed): arm − factor · reference} over the keys both have."""
    return {key: arm[key] - factor * reference[key] for key in arm if key in reference}


def findings(cells: dict[tuple, dict], stages: list[dict], power: dict | None = None,
             unconverged: dict[tuple, int] | None = None, transferability: dict | None = None) -> list[dict]:
    """The six claims' rows. `cells`: {(objective, strategy, fraction): {(unit, seed): Dice}} of the grid
    (statistics.unit_observations); `stages`: the study's sources ({name, objective}); `power`: the study
    file's checked power block; `unconverged`: {cell: runs not converged}; `transferability`: the report's
    transferability table (None: claim 6 not measured)."""
    power = power or {}
    unconverged = unconverged or {}
    run_sd = power.get("run_sd")
    effect = power.get("effect") or EFFECT
    margin = power.get("equivalence_margin") or MARGIN
    fractions = sorted({c[2] for c in cells})
    low, high = (fractions[0], fractions[-1]) if fractions else (None, None)
    scratch = {f: (NO_SOURCE, "scratch", f) for f in fractions}
    rows = []

    # 1. encoder > scratch at low data
    row = _row(1, "Transferring the encoder is truly beneficial, most in low-data regimes: encoder > scratch at "
                  "the lowest fraction", DIPPEL, f"none published (stated effect here: +{effect:g} Dice)")
    source = _source(cells, stages, "encoder")
    if source and low is not None and (source, "encoder", low) in cells and scratch[low] in cells:
        arms = [(source, "encoder", low), scratch[low]]
        test = paired_over_seeds(cells[arms[0]], cells[arms[1]])
        row.update(arm=_label(arms[0]), reference="scratch", fraction=low)
        _difference_row(row, test, arms, unconverged, _sd(test["per_seed"], run_sd, math.sqrt(2)), effect)
    rows.append(row)

    # 2. decoder ≈ scratch (TOST)
    row = _row(2, "Transferring the decoder does not improve performance: a random decoder gives equivalent "
                  f"results (decoder ≈ scratch within ±{margin:g} Dice)", DIPPEL, "none published",
               kind="equivalence", side=0, stated_effect=margin)
    source = _source(cells, stages, "decoder")
    if source and low is not None and (source, "decoder", low) in cells and scratch[low] in cells:
        arms = [(source, "decoder", low), scratch[low]]
        test = equivalence_over_seeds(cells[arms[0]], cells[arms[1]], margin, ALPHA)
        value, basis = _sd(test["per_seed"], run_sd, math.sqrt(2))
        row.update(arm=_label(arms[0]), reference="scratch", fraction=low, estimate=test["estimate"],
                   ci_low=test["ci_low"], ci_high=test["ci_high"], p=test["p"], method=test["method"],
                   n_seeds=test["n_seeds"], power_basis=basis, unconverged=sum(unconverged.get(a, 0) for a in arms),
                   power=tost_power(test["n_seeds"], value, margin, 0.0, ALPHA) if value else None,
                   seeds_needed=seeds_for_equivalence(value, margin, 0.0, ALPHA) if value else None)
    rows.append(row)

    # 3. segmentation / reconstruction encoder > classification encoder
    row = _row(3, "Encoders pretrained on segmentation or reconstruction transfer better than an encoder "
                  "pretrained on classification", DIPPEL, f"none published (stated effect here: +{effect:g} Dice)")
    good = _source(cells, stages, "encoder", ("segmentation", "reconstruction", "contrastive_reconstruction"))
    classification = _source(cells, stages, "encoder", ("classification",))
    if good and classification and low is not None and (good, "encoder", low) in cells \
            and (classification, "encoder", low) in cells:
        arms = [(good, "encoder", low), (classification, "encoder", low)]
        test = paired_over_seeds(cells[arms[0]], cells[arms[1]])
        row.update(arm=_label(arms[0]), reference=_label(arms[1]), fraction=low)
        _difference_row(row, test, arms, unconverged, _sd(test["per_seed"], run_sd, math.sqrt(2)), effect)
    rows.append(row)

    # 4. frozen random encoder keeps ≥ 90 % of scratch
    row = _row(4, f"A network whose encoder is frozen at random values and only the decoder trained is quite "
                  f"accurate: it keeps ≥ {RATIO:.0%} of scratch Dice", f"{KARIMI}; number: {HIDY}",
               f"{RATIO_PAPER[0]:.0%}–{RATIO_PAPER[1]:.0%} of scratch (CNN U-Nets, 3 data sets, 5 seeds)",
               kind="ratio")
    arms = [(NO_SOURCE, "random_encoder_frozen", high), scratch.get(high)]
    if high is not None and arms[0] in cells and arms[1] in cells:
        arm, reference = cells[arms[0]], cells[arms[1]]
        test = paired_over_seeds(arm, {key: RATIO * value for key, value in reference.items()})
        ratios = {}
        for seed in test["per_seed"]:
            shared = [key for key in arm if key[1] == seed and key in reference]
            ratios[seed] = float(np.mean([arm[k] for k in shared]) / np.mean([reference[k] for k in shared]))
        ratio = mean_ci(ratios.values()) if len(ratios) >= MIN_SEEDS else {"mean": mean_ci(ratios.values())["mean"],
                                                                             "ci_low": None, "ci_high": None}
        scratch_mean = float(np.mean(list(reference.values())))
        stated = ratio_effect(scratch_mean)
        row.update(arm="random_encoder_frozen", reference="scratch", fraction=high)
        _difference_row(row, test, arms, unconverged, _sd(test["per_seed"], run_sd, RATIO_SD_FACTOR),
                        stated)
        row.update(estimate=ratio["mean"], ci_low=ratio["ci_low"], ci_high=ratio["ci_high"],
                   method=f"{row['method']}, of random_encoder_frozen − {RATIO:g} × scratch", stated_effect=None)
    rows.append(row)

    # 5. the encoder's benefit shrinks as the fraction grows
    row = _row(5, "The benefit of pretraining is strongest in low-data regimes: encoder − scratch shrinks from the "
                  "lowest to the highest fraction", DIPPEL, f"none published (stated effect here: {effect:g} Dice)")
    source = _source(cells, stages, "encoder")
    arms = [(source, "encoder", low), scratch.get(low), (source, "encoder", high), scratch.get(high)]
    if source and low != high and all(a in cells for a in arms):
        test = paired_over_seeds(_contrast(cells[arms[0]], cells[arms[1]]), _contrast(cells[arms[2]], cells[arms[3]]))
        row.update(arm=f"{source}/encoder − scratch at {low:g}", reference=f"the same at {high:g}",
                   fraction=f"{low:g} vs {high:g}")
        _difference_row(row, test, arms, unconverged, _sd(test["per_seed"], run_sd, 2.0), effect)
    rows.append(row)

    # 6. robustness score vs fine-tuned Dice
    row = _row(6, "The robustness score predicts transfer: lower score, higher fine-tuned Dice (Spearman ρ < 0 "
                  "across checkpoints)", HIDY, f"ρ {RHO_PAPER[1]:+.2f} to {RHO_PAPER[0]:+.2f} at deep levels",
               kind="correlation", side=-1, stated_effect=RHO_PAPER[1])
    spearman = next((s for s in (transferability or {}).get("spearman") or []
                     if s["stage"] == "all" and s["score"] == "robustness"), None)
    if spearman and spearman.get("rho") is not None:
        interval = spearman_interval(spearman["rho"], spearman["n"])
        row.update(arm="robustness score", reference="fine-tuned Dice", fraction=transferability.get("fraction"),
                   estimate=spearman["rho"], p=spearman["p_value"], n_seeds=spearman["n"],
                   method=f"Spearman over {spearman['n']} checkpoints (all sources)",
                   power=correlation_power(spearman["n"], RHO_PAPER[1], ALPHA), power_basis="ρ = −0.45", **interval)
    rows.append(row)

    for row, adjusted in zip(rows, holm(row["p"] for row in rows)):
        row["p_holm"] = adjusted
    for row in rows:
        row["verdict"] = verdict(row)
    return rows


def verdict(row: dict, alpha: float = ALPHA) -> str:
    """One of VERDICTS (or NOT_MEASURED) for a claim row (see the module text)."""
    if row["estimate"] is None:
        return NOT_MEASURED
    if row["unconverged"]:
        return NOT_CONVERGED
    significant = row["p_holm"] is not None and row["p_holm"] < alpha
    if row["kind"] == "equivalence":
        if significant:
            return REPRODUCES
        margin, low, high = row["stated_effect"], row["ci_low"], row["ci_high"]
        outside = low is not None and (low > margin or high < -margin)
        return CONTRADICTED if outside else _inconclusive(row)
    side = row["side"]
    # claim 4's estimate is the ratio; its test is of ratio − 0.9 (the sign of the test's quantity)
    signed = (row["estimate"] - RATIO) if row["kind"] == "ratio" else row["estimate"]
    if significant:
        return REPRODUCES if signed * side > 0 else CONTRADICTED
    stated = row["stated_effect"]
    if stated is not None and row["ci_low"] is not None:
        claimed_end = row["ci_high"] if side > 0 else row["ci_low"]
        if (claimed_end < stated) if side > 0 else (claimed_end > stated):
            return CONTRADICTED
    return _inconclusive(row)


def _inconclusive(row: dict) -> str:
    powered = row["power"] is not None and row["power"] >= POWER_GOAL
    return POWERED_NULL if powered else UNDERPOWERED


# Markdown ---------------------------------------------------------------------------------------------------
def _number(value: float | None, signed: bool = True) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _estimate(row: dict) -> str:
    if row["estimate"] is None:
        return "–"
    signed = row["kind"] != "ratio"
    text = (f"{row['estimate']:.1%}" if row["kind"] == "ratio" else _number(row["estimate"], signed))
    if row["ci_low"] is not None:
        level = "90 %" if row["kind"] == "equivalence" else "95 %"
        if row["kind"] == "ratio":
            text += f" [{row['ci_low']:.1%}, {row['ci_high']:.1%}]"
        else:
            text += f" [{_number(row['ci_low'])}, {_number(row['ci_high'])}]"
        text += f" ({level})"
    return text


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"


def findings_markdown(name: str, rows: list[dict], study_file: str | None = None) -> str:
    lines = [f"# Findings of study `{name}`: the seed papers' claims", ""]
    if study_file:
        lines += [f"- study file: `{study_file}`", ""]
    lines += ["One row per claim. Estimates: Dice differences (arm − reference) averaged over the test units both "
              "arms share, one value per seed, t-interval over seeds; claim 4 the per-seed ratio; claim 6 Spearman ρ "
              "(Fisher-z interval). p: the claim's test, Holm-adjusted over the claims on this page that have one. "
              "Power: of that test, for the claim's stated effect, with the seeds (claim 6: checkpoints) the study "
              "had; in brackets the seeds power 0.8 needs. Verdicts: "
              + ", ".join(f"“{v}”" for v in VERDICTS)
              + f" (“{NOT_MEASURED}” where the study has no such arms).", "",
              "| # | claim (paper) | paper's number | arm vs reference (fraction) | ours [CI] | test | p (Holm) | "
              "power | verdict |", "|---:|---|---|---|---|---|---:|---|---|"]
    for row in rows:
        fraction = row["fraction"] if isinstance(row["fraction"], str) else format(row["fraction"] or 0, "g")
        compared = f"{row['arm']} vs {row['reference']} ({fraction})" if row["arm"] else "–"
        if row["power"] is None:
            power = "–" if row["estimate"] is None else f"– ({row['power_basis']})"
        else:
            power = f"{row['power']:.2f}" + (f" (0.8: {row['seeds_needed']} seeds)" if row["seeds_needed"] else "")
        lines.append(f"| {row['number']} | {row['claim']} ({row['paper']}) | {row['paper_number']} | {compared} | "
                     f"{_estimate(row)} | {row['method'] or '–'} | {_p(row['p_holm'])} | {power} | "
                     f"{row['verdict']} |")
    unconverged = [f"claim {row['number']}: {row['unconverged']} run(s) of its arms did not converge"
                   for row in rows if row["unconverged"]]
    if unconverged:
        lines += ["", "Not converged (run.json `converged`, counted per arm as in summary.md): " + "; ".join(unconverged)
                  + "."]
    return "\n".join(lines) + "\n"
