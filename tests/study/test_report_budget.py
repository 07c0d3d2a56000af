"""The report's fixed-small-budget against at-convergence table (issue 16: pretrained decoders converge faster
but need not end higher, so both are shown)."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from medtransfer.study.report import _budget_markdown, budget_and_convergence, budget_epochs, dice_at


def _record(strategy, seed, curve, stopped=False, objective=None):
    run = SimpleNamespace(objective=objective or ("none" if strategy == "scratch" else "seg"), strategy=strategy,
                          fraction=0.05, seed=seed, max_epochs=len(curve))
    history = [{"epoch": e + 1, "val_dice": v} for e, v in enumerate(curve)]
    return {"run": run, "record": {"val_history": history, "early_stopping": {"stopped_early": stopped}}}


def test_budget_is_a_fifth_of_max_epochs_and_dice_at_takes_the_last_validation_before_it():
    assert budget_epochs(15) == 3 and budget_epochs(40) == 8 and budget_epochs(2) == 1 and budget_epochs(None) == 1
    history = [{"epoch": 2, "val_dice": 0.3}, {"epoch": 4, "val_dice": 0.5}]
    assert dice_at(history, 1) is None and dice_at(history, 3) == 0.3 and dice_at(history, 9) == 0.5


def test_fast_start_without_a_higher_end_shows_in_the_budget_column_only():
    records = {}
    for seed, shift in enumerate((0.0, 0.01, -0.01)):
        slow = [0.1 + shift, 0.2 + shift, 0.3 + shift, 0.5 + shift, 0.6 + shift]       # scratch: slow start
        fast = [0.4 + shift, 0.5 + 2 * shift, 0.55, 0.6 + shift, 0.6 - shift]  # transferred: fast start
        records[f"s{seed}"] = _record("scratch", seed, slow)
        records[f"d{seed}"] = _record("decoder", seed, fast, stopped=seed == 0)
    rows = budget_and_convergence(records, budget=2)
    scratch, decoder = rows
    assert scratch["strategy"] == "scratch" and "budget_vs_scratch" not in scratch
    assert scratch["improving"] == 3 and decoder["improving"] == 1  # best at the last epoch, no early stop
    assert decoder["budget_vs_scratch"]["estimate"] == pytest.approx(0.3)  # per seed 0.30, 0.31, 0.29
    assert decoder["budget_vs_scratch"]["p_holm"] < 0.01
    assert decoder["best_vs_scratch"]["estimate"] == pytest.approx(0.02 / 3)  # per seed 0, 0, +0.02
    assert decoder["best_vs_scratch"]["p_holm"] > 0.3
    text = "\n".join(_budget_markdown(rows, 2))
    assert "at 2 epochs" in text and "4 of 6 fine-tunes were still improving" in text


def test_a_comparison_with_an_unconverged_run_is_marked_not_at_convergence():
    records = {}
    for seed in range(3):
        records[f"s{seed}"] = _record("scratch", seed, [0.5, 0.6, 0.62, 0.62])
        records[f"s{seed}"]["record"]["converged"] = {"value": True, "reason": "plateau"}
        records[f"e{seed}"] = _record("encoder", seed, [0.6, 0.65, 0.66, 0.66])
        # run.json's own verdict wins over the best-at-last-epoch rule: seed 2 says it was still rising
        records[f"e{seed}"]["record"]["converged"] = {"value": seed != 2, "reason": "x"}
    scratch, encoder = budget_and_convergence(records, budget=1)
    assert scratch["unconverged"] == 0 and encoder["unconverged"] == 1 and encoder["baseline_unconverged"] == 0
    text = "\n".join(_budget_markdown([scratch, encoder], 1))
    assert "**1 of 6 fine-tunes did not converge.**" in text
    scratch_line = next(line for line in text.splitlines() if line.startswith("| none | scratch"))
    encoder_line = next(line for line in text.splitlines() if line.startswith("| seg | encoder"))
    assert "†" not in scratch_line and scratch_line.endswith("| 0 of 3 |")
    assert encoder_line.count("†") == 2 and encoder_line.endswith("| 1 of 3 |")  # its value and its Δ vs scratch


def test_the_budget_takes_the_plans_max_epochs_when_the_study_sets_none():
    from medtransfer.study.spec import Run

    plan = str(Path(__file__).resolve().parents[2] / "studies" / "plans" / "busi_breast_us_lesions.json")

    def run(**args):
        return Run("ft-x", "finetune", "none", "scratch", 0.05, 0, (), args, {})

    planned = run(plan=plan)
    assert planned.max_epochs == 94 and budget_epochs(planned.max_epochs) == 19
    assert run(plan=plan, max_epochs=40).max_epochs == 40  # the study's setting wins over the plan's
    assert run().max_epochs is None
