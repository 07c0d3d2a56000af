"""The report's statistics: volumes as units, seed-level cells and comparisons, convergence to a common target."""

import math

import pytest

from medtransfer.study.report import analyse, convergence, convergence_targets, validation_auc
from medtransfer.study.spec import Run


def _run(strategy, fraction, seed, checkpoint_epoch=None):
    return Run(f"ft-{strategy}-{fraction}-{seed}", "finetune", "src", strategy, fraction, seed, (), {}, {},
               checkpoint_epoch=checkpoint_epoch)


def _history(values):
    return [{"epoch": e, "val_dice": v} for e, v in enumerate(values, start=1)]


def test_common_target_cannot_be_gamed_by_a_flat_run():
    flat = _history([0.30, 0.30, 0.30, 0.30])  # reaches 90% of its own final Dice at epoch 1: "fast" by the old rule
    good = _history([0.20, 0.60, 0.80, 0.90])
    late_checkpoint = _history([0.99] * 4)  # checkpoint fine-tunes do not set the grid's target
    targets = convergence_targets([(_run("scratch", 0.1, 0), {"val_history": flat}),
                                   (_run("encoder", 0.1, 0), {"val_history": good}),
                                   (_run("encoder", 0.1, 0, checkpoint_epoch=1), {"val_history": late_checkpoint})])
    assert targets == {(0.1, 0): pytest.approx(0.95 * 0.90)}
    target = targets[(0.1, 0)]
    assert convergence(flat, target, 20) == {"convergence_target": target, "target_reached": False,
                                             "epochs_to_target": None, "iterations_to_target": None,
                                             "val_auc": pytest.approx(0.30)}
    fast = convergence(good, target, 20)
    assert fast["target_reached"] and fast["epochs_to_target"] == 4 and fast["iterations_to_target"] == 80
    assert convergence(_history([0.2, 0.86, 0.5, 0.4]), target, 20)["epochs_to_target"] == 2  # first crossing
    # trapezoid over epochs 1..4 / span 3: (0.2/2 + 0.6 + 0.8 + 0.9/2) / 3
    assert validation_auc(good) == pytest.approx((0.1 + 0.6 + 0.8 + 0.45) / 3)
    assert validation_auc([]) is None and validation_auc(_history([0.7])) == 0.7
    assert convergence([], target, 20)["target_reached"] is None  # no validation: unknown, not "not reached"


def _row(strategy, case, volume, seed, dice):
    return {"objective": "none" if strategy == "scratch" else "src", "strategy": strategy, "fraction": 0.1,
            "seed": seed, "case": case, "volume": volume, "dice": dice, "checkpoint_epoch": ""}


def test_slices_of_one_volume_are_one_observation_and_seeds_the_replicates():
    rows = []
    offsets = {0: 0.00, 1: 0.03, 2: -0.01}  # run-level offsets of the encoder fine-tunes
    for seed, offset in offsets.items():
        for strategy, shift in (("scratch", 0.0), ("encoder", 0.1 + offset)):
            rows += [_row(strategy, "a_1", "a", seed, 0.5 + shift), _row(strategy, "a_2", "a", seed, 0.7 + shift),
                     _row(strategy, "a_3", "a", seed, 0.9 + shift), _row(strategy, "b_1", "b", seed, 0.4 + shift)]
    rows.append({**_row("encoder", "x", "", 0, 0.0), "checkpoint_epoch": 3})  # a checkpoint fine-tune: not in the table
    result = analyse(rows, {})
    assert result["unit"] == "volume" and result["n_seeds"] == 3
    scratch = next(r for r in result["table"] if r["strategy"] == "scratch")
    assert scratch["n_units"] == 2 and scratch["mean"] == pytest.approx((0.7 + 0.4) / 2)  # volume means
    assert scratch["sd_seeds"] == pytest.approx(0.0) and scratch["ci_low"] == pytest.approx(scratch["mean"])
    test = result["tests"][0]
    assert test["baseline"] == "scratch" and test["n_seeds"] == 3 and test["n_units"] == 6
    assert list(test["per_seed"].values()) == pytest.approx([0.10, 0.13, 0.09])
    from scipy import stats

    expected = stats.ttest_1samp([0.10, 0.13, 0.09], 0.0)
    assert test["estimate"] == pytest.approx(0.32 / 3) and test["p"] == pytest.approx(expected.pvalue)
    assert test["p_holm"] == pytest.approx(expected.pvalue)  # a family of one
    per_case = analyse([{**r, "volume": ""} for r in rows[:-1]], {})  # 3D cases: per case
    assert per_case["table"][0]["n_units"] == 4 and per_case["unit"] == "case"


def test_two_seeds_give_an_estimate_but_no_interval_or_p():
    rows = [_row(s, f"c{i}", "", seed, 0.5 + 0.01 * i + (0.05 if s == "encoder" else 0) + 0.02 * seed)
            for s in ("scratch", "encoder") for seed in (0, 1) for i in range(5)]
    result = analyse(rows, {})
    test = result["tests"][0]
    assert test["estimate"] == pytest.approx(0.05) and test["p"] is None and test["ci_low"] is None
    assert "too few seeds for a seed-level test" in test["method"] and test["p_holm"] is None
    assert all(r["ci_low"] is None for r in result["table"]) and not math.isnan(result["table"][0]["mean"])


def test_study_file_names_extra_comparisons(tmp_path, medtransfer_home):
    from medtransfer.study.spec import StudyError, parse_study
    from tests.study.conftest import tiny_study

    spec = parse_study(tiny_study(comparisons=[["encoder", "decoder"], ["reconstruction/decoder", "scratch"]]), tmp_path)
    assert spec.comparisons == [("encoder", "decoder"), ("reconstruction/decoder", "scratch")]
    for bad, message in (([["encoder", "full"]], "'full' is not an arm of this study"),
                         ([["conrec/encoder", "scratch"]], "'conrec/encoder' is not an arm"),
                         ([["encoder"]], "expected \\[arm, reference\\]"), ("encoder", "must be a list")):
        with pytest.raises(StudyError, match=message):
            parse_study(tiny_study(comparisons=bad), tmp_path)
    wobble = {"scratch": (0, 0, 0), "encoder": (0, 0.01, 0.02), "decoder": (0.01, 0, 0.005)}  # run offsets
    rows = [{**_row(strategy, f"c{i}", "", seed, 0.5 + 0.01 * i + gain + wobble[strategy][seed]),
             "objective": "none" if strategy == "scratch" else "reconstruction"}
            for strategy, gain in (("scratch", 0), ("encoder", 0.1), ("decoder", 0.02)) for seed in range(3)
            for i in range(4)]
    tests = analyse(rows, {}, spec.comparisons)["tests"]
    named = next(t for t in tests if t["baseline"] == "decoder")
    assert named["strategy"] == "encoder" and named["estimate"] == pytest.approx(0.085) and named["p"] is not None
    assert len(tests) == 3 and all(t["p_holm"] >= t["p"] for t in tests)  # decoder vs scratch is not repeated


def test_the_demo_study_report_says_it_has_too_few_seeds(medtransfer_home):
    """studies/demo.yaml keeps its 2 seeds: its summary must say so instead of printing p-values."""
    from pathlib import Path

    from medtransfer.study.report import summary_markdown
    from medtransfer.study.spec import load_study

    spec = load_study(Path(__file__).resolve().parents[2] / "studies" / "demo.yaml")
    assert spec.seeds == [0, 1]
    rows = [{"objective": run.objective, "strategy": run.strategy, "fraction": run.fraction, "seed": run.seed,
             "case": f"c{i}", "volume": "", "checkpoint_epoch": "" if run.checkpoint_epoch is None else 1,
             "dice": 0.7 + 0.01 * i + (0.02 if run.strategy == "encoder" else 0) + 0.01 * run.seed}
            for run in spec.expand() if run.kind == "finetune" for i in range(12)]
    text = summary_markdown(spec, analyse(rows, {}), [], len(spec.expand()), [], 0.0)
    assert "**This study has 2 seeds: too few seeds for a seed-level test**" in text
    assert "no confidence intervals and no p-values" in text and "Holm over the 0 comparisons" in text
    assert "| conrec | encoder | 0.1 | scratch | 2 | 0.020 | – | – | – |" in text
