"""findings.md (medtransfer.study.findings): one row per seed-paper claim with the paper's number, our estimate,
the test and Holm p, power for the stated effect and a verdict; on synthetic results tables (seeded) and through a
study report made by the fake bundle (no training)."""

import numpy as np
import pytest

from medtransfer.study.findings import (CONTRADICTED, NOT_CONVERGED, NOT_MEASURED, POWERED_NULL, REPRODUCES,
                                        UNDERPOWERED, VERDICTS, _row, findings, findings_markdown, verdict)
from medtransfer.study.report import study_file_label
from medtransfer.study.runner import run_study
from tests.study.conftest import fake_command, tiny_study, write_study

STAGES = [{"name": "seg", "objective": "segmentation"}, {"name": "cls", "objective": "classification"}]
POWER = {"run_sd": 0.005, "effect": 0.03, "equivalence_margin": 0.03, "alpha": 0.05}
# (objective, strategy, fraction): mean Dice. seg/encoder +0.06 over scratch at both fractions (no shrinking),
# seg/decoder = scratch, cls/encoder 0.03 above seg/encoder, random frozen encoder at 95 % of scratch
ARMS = {("none", "scratch", 0.05): 0.60, ("none", "scratch", 1.0): 0.80, ("seg", "encoder", 0.05): 0.66,
        ("seg", "encoder", 1.0): 0.86, ("seg", "decoder", 0.05): 0.60, ("cls", "encoder", 0.05): 0.69,
        ("none", "random_encoder_frozen", 1.0): 0.76}


def synthetic_cells(n_seeds=8, run_sd=0.005, n_cases=12, seed=29):
    """{(objective, strategy, fraction): {(case, seed): Dice}}: case difficulty shared by every arm, a run
    offset per arm and seed (sd `run_sd`), noise per observation."""
    rng = np.random.default_rng(seed)
    case = rng.normal(0, 0.05, n_cases)
    cells = {}
    for key, mean in ARMS.items():
        offsets = rng.normal(0, run_sd, n_seeds)
        cells[key] = {(f"c{c:02d}", s): float(mean + case[c] + offsets[s] + rng.normal(0, 0.01))
                      for c in range(n_cases) for s in range(n_seeds)}
    return cells


def by_number(rows):
    return {row["number"]: row for row in rows}


def test_eight_seeds_at_low_run_sd_give_verdicts_with_power():
    rows = by_number(findings(synthetic_cells(), STAGES, POWER))
    assert len(rows) == 6 and all(row["verdict"] in VERDICTS + (NOT_MEASURED,) for row in rows.values())
    one, two, three, four, five, six = (rows[n] for n in range(1, 7))
    assert (one["arm"], one["reference"], one["fraction"]) == ("seg/encoder", "scratch", 0.05)
    assert one["estimate"] == pytest.approx(0.0609, abs=1e-4) and one["verdict"] == REPRODUCES
    assert one["p_holm"] == pytest.approx(8.02e-7, rel=1e-2) and one["power"] > 0.999 and one["seeds_needed"] == 3
    assert two["kind"] == "equivalence" and two["method"].startswith("TOST within ±0.03")
    assert two["ci_low"] == pytest.approx(0.0011, abs=1e-4) and two["ci_high"] == pytest.approx(0.0060, abs=1e-4)
    assert two["verdict"] == REPRODUCES
    # the classification encoder is better here: significant on the other side
    assert (three["arm"], three["reference"]) == ("seg/encoder", "cls/encoder")
    assert three["estimate"] == pytest.approx(-0.0297, abs=1e-4) and three["verdict"] == CONTRADICTED
    assert four["estimate"] == pytest.approx(0.946, abs=1e-3) and four["ci_low"] > 0.9 and four["verdict"] == REPRODUCES
    # no shrinking (+0.06 at both fractions): not significant, but the interval rules out the stated 0.03
    assert five["estimate"] == pytest.approx(0.0019, abs=1e-4) and five["ci_high"] < 0.03
    assert five["p_holm"] == pytest.approx(0.706, abs=1e-3) and five["verdict"] == CONTRADICTED
    assert six["verdict"] == NOT_MEASURED and six["p"] is None  # no transferability analysis in this study


def test_three_noisy_seeds_are_inconclusive_at_this_power_with_the_power_they_had():
    rows = by_number(findings(synthetic_cells(n_seeds=3, run_sd=0.04, seed=5), STAGES, POWER))
    assert rows[1]["n_seeds"] == 3 and rows[1]["power_basis"] == "sd measured here"
    underpowered = [n for n, row in rows.items() if row["verdict"] == UNDERPOWERED]
    assert underpowered == [1, 2, 3, 4, 5] and rows[6]["verdict"] == NOT_MEASURED
    assert all(rows[n]["power"] < 0.8 and rows[n]["seeds_needed"] > 3 for n in (1, 2, 3))


def test_a_powered_test_that_shows_neither_the_effect_nor_its_absence_is_not_called_underpowered():
    # the converged breast-US study's claim 1 (docs/results/breast_us_converged): +0.017 [−0.001, +0.035], Holm p
    # 0.117, power 0.93 for +0.03 with 7 seeds: the interval holds both 0 and +0.03, and more seeds of a design
    # that already had power 0.93 are not what it lacks
    one = _row(1, "encoder > scratch", "Dippel", "none", estimate=0.017, ci_low=-0.001, ci_high=0.035, p=0.058,
               p_holm=0.117, power=0.93, stated_effect=0.03, n_seeds=7)
    assert verdict(one) == POWERED_NULL
    assert verdict({**one, "power": 0.54}) == UNDERPOWERED and verdict({**one, "power": None}) == UNDERPOWERED
    assert verdict({**one, "power": 0.80}) == POWERED_NULL  # the goal is "power ≥ 0.8"
    assert verdict({**one, "ci_high": 0.029}) == CONTRADICTED  # the interval rules out +0.03: whatever the power
    assert verdict({**one, "p_holm": 0.01}) == REPRODUCES
    # equivalence (claim 2): TOST not significant, the 90 % interval straddles the margin
    two = _row(2, "decoder = scratch", "Dippel", "none", kind="equivalence", side=0, stated_effect=0.03,
               estimate=0.02, ci_low=0.005, ci_high=0.036, p=0.2, p_holm=0.4, power=0.85, n_seeds=7)
    assert verdict(two) == POWERED_NULL and verdict({**two, "power": 0.6}) == UNDERPOWERED
    assert verdict({**two, "ci_low": 0.031, "ci_high": 0.05}) == CONTRADICTED


def test_unconverged_arms_make_their_claims_inconclusive_and_the_robustness_row_uses_spearman():
    transferability = {"fraction": 0.05, "spearman": [
        {"stage": "seg", "score": "robustness", "rho": -0.2, "p_value": 0.4, "n": 5},
        {"stage": "all", "score": "robustness", "rho": -0.6, "p_value": 0.005, "n": 20},
        {"stage": "all", "score": "logme", "rho": 0.1, "p_value": 0.6, "n": 20}]}
    rows = by_number(findings(synthetic_cells(), STAGES, POWER, {("seg", "encoder", 0.05): 1}, transferability))
    assert [n for n, row in rows.items() if row["verdict"] == NOT_CONVERGED] == [1, 3, 5]
    assert rows[2]["verdict"] == REPRODUCES and rows[1]["unconverged"] == 1
    six = rows[6]
    assert six["estimate"] == -0.6 and six["n_seeds"] == 20 and six["verdict"] == REPRODUCES
    assert six["ci_low"] == pytest.approx(-0.8365, abs=1e-4) and six["ci_high"] == pytest.approx(-0.1750, abs=1e-4)
    assert six["power"] == pytest.approx(0.478, abs=1e-3)  # for Hidy et al.'s ρ = −0.45 over 20 checkpoints
    # Holm over the six claims' p-values: the smallest of 6 is multiplied by 6
    ps = sorted(row["p"] for row in rows.values())
    assert min(row["p_holm"] for row in rows.values()) == pytest.approx(6 * ps[0])
    page = findings_markdown("synthetic", list(rows.values()), "studies/x.yaml")
    assert "study file: `studies/x.yaml`" in page and "claim 1: 1 run(s) of its arms did not converge" in page
    table = [line for line in page.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == 6
    assert table[3].endswith(f"| {REPRODUCES} |") and "94.6% [" in table[3] and "91%–96% of scratch" in table[3]
    assert "ρ -0.45 to -0.50 at deep levels" in table[5] and "-0.600 [-0.837, -0.175]" in table[5]


def test_a_study_report_writes_findings_next_to_summary_and_names_the_study_file_relative(tmp_path,
                                                                                          medtransfer_home):
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    (checkout / "studies").mkdir()
    content = tiny_study(power={"run_sd": 0.01, "effect": 0.03})
    content["finetune"]["seeds"] = [0, 1, 2]
    content["finetune"]["fractions"] = [0.1]
    study_file = write_study(checkout / "studies", content)
    study_dir = tmp_path / "out"
    outcome = run_study(study_file, study_dir, progress=False, command_factory=fake_command())
    assert outcome["counts"]["failed"] == 0
    summary = (study_dir / "summary.md").read_text()
    assert "- study file: `studies/study.yaml` (content hash" in summary and str(tmp_path) not in summary
    # the seeds-by-power calculation: √2 · 0.01 per difference, 3 seeds, +0.03
    assert "| encoder vs scratch (a difference of 0.03 Dice) | 3 | 0.51 | 5 |" in summary
    page = (study_dir / "findings.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 6 and str(tmp_path) not in page
    # the fake bundle's encoder is +0.1 at every seed (no between-seed variation: no test), its decoder +0.02;
    # its validation curves rise to the last epoch, so the report counts every run as not converged
    assert "reconstruction/encoder vs scratch (0.1) | +0.100 |" in rows[0] and "identical" in rows[0]
    assert "| 0.51 (0.8: 5 seeds) |" in rows[0]  # power from power.run_sd: sd of a difference √2 · 0.01
    assert rows[0].endswith(f"| {NOT_CONVERGED} |") and rows[1].endswith(f"| {NOT_CONVERGED} |")
    assert all(row.endswith(f"| {NOT_MEASURED} |") for row in rows[2:])  # one fraction, no cls source, no scores
    assert "claim 1: 6 run(s) of its arms did not converge" in page
    assert outcome["report"]["findings"] == str(study_dir / "findings.md")


def test_study_file_label_is_relative_to_the_checkout_or_the_file_name(tmp_path):
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    assert study_file_label(str(tmp_path / "repo" / "studies" / "a.yaml")) == "studies/a.yaml"
    assert study_file_label(str(tmp_path / "elsewhere" / "b.yaml")) == "b.yaml"
    assert study_file_label(None) == "unknown"
