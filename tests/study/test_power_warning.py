"""A study file's `power` block: checked before training; `study plan` and `study run` print one warning line per
comparison whose power with the study's seeds is below 0.5, and the study still runs (issue 29)."""

import pytest

from medtransfer.study import cli_commands
from medtransfer.study.size import planned_comparisons, power_lines
from medtransfer.study.spec import StudyError, load_study, parse_study
from tests.study.conftest import tiny_study, write_study

POWER = {"run_sd": 0.015, "effect": 0.03, "equivalence_margin": 0.03, "alpha": 0.05}


def _study(tmp_path, seeds=(0, 1, 2), **changes):
    content = tiny_study(power=dict(POWER), **changes)
    content["finetune"]["seeds"] = list(seeds)
    return write_study(tmp_path, content)


def test_three_seeds_warn_for_every_comparison_with_the_seeds_each_needs(tmp_path, medtransfer_home):
    spec = load_study(_study(tmp_path, comparisons=[["encoder", "decoder"]]))
    assert planned_comparisons(spec) == [("encoder", "scratch", False), ("decoder", "scratch", True),
                                         ("encoder", "decoder", False)]
    lines = power_lines(spec)
    # sd of a difference √2 · 0.015 = 0.0212: the paired t has power 0.29 with 3 seeds for +0.03, 7 seeds reach
    # 0.8; TOST within ±0.03 has 0.29 with 3 seeds and needs 6
    assert lines == [
        "warning: power 0.29 for encoder vs scratch (a difference of 0.03 Dice) with 3 seeds (run sd 0.015, "
        "alpha 0.05); power 0.8 needs 7 seeds",
        "warning: power 0.29 for decoder ≈ scratch (TOST within ±0.03 Dice) with 3 seeds (run sd 0.015, "
        "alpha 0.05); power 0.8 needs 6 seeds",
        "warning: power 0.29 for encoder vs decoder (a difference of 0.03 Dice) with 3 seeds (run sd 0.015, "
        "alpha 0.05); power 0.8 needs 7 seeds"]


def test_enough_seeds_print_no_warning_and_no_block_prints_nothing(tmp_path, medtransfer_home):
    assert power_lines(load_study(_study(tmp_path, seeds=range(8)))) == []
    assert power_lines(load_study(write_study(tmp_path, tiny_study(), "plain.yaml"))) == []


def test_plan_prints_the_lines_and_run_prints_them_before_training_and_still_runs(tmp_path, medtransfer_home,
                                                                                    monkeypatch, capsys):
    path = _study(tmp_path)
    assert cli_commands.main(["study", "plan", str(path), "--study-dir", str(tmp_path / "sd")]) == 0
    plan = capsys.readouterr().out
    assert plan.count("warning: power") == 2 and "encoder vs scratch" in plan and "power 0.8 needs 6 seeds" in plan

    import medtransfer.study.runner as runner
    import medtransfer.study.size as size

    def started(*args, **kwargs):  # stands in for the training: records what was printed before it
        started.before = capsys.readouterr().out
        return {"study_dir": tmp_path / "sd", "counts": {"finished": 1, "failed": 0, "skipped": 0},
                "already_finished": 0, "seconds": 1.0}

    monkeypatch.setattr(runner, "run_study", started)
    monkeypatch.setattr(size, "record_timings", lambda spec, folder: {})
    assert cli_commands.main(["study", "run", str(path), "--study-dir", str(tmp_path / "sd"), "--no-progress"]) == 0
    assert started.before.count("warning: power") == 2 and "decoder ≈ scratch" in started.before


def test_the_frozen_random_arm_is_sized_for_claim_4s_ratio_test_given_the_expected_scratch_dice(tmp_path,
                                                                                                 medtransfer_home):
    """With `reference_dice`, random_encoder_frozen vs scratch is the findings page's claim-4 test (arm − 0.9 ×
    scratch over seeds, sd √(1 + 0.81) × run sd, effect (93.5 % − 90 %) × the scratch Dice), not `effect`: the
    numbers breast_us_converged.yaml's comment states (7 seeds 0.73 at run sd 0.015 and scratch 0.673; 3 give 0.22)."""
    from medtransfer.study.size import comparison_powers

    block = {"run_sd": 0.015, "effect": 0.03, "reference_dice": 0.673, "alpha": 0.05}
    grid = {"strategies": ["scratch", "random_encoder_frozen"], "fractions": [0.1], "seeds": list(range(7)),
            "settings": {"max_epochs": 2, "iterations_per_epoch": 2}}
    spec = load_study(write_study(tmp_path, tiny_study(power=block, pretraining=[], finetune=grid)))
    [row] = comparison_powers(spec)
    assert round(row["power"], 2) == 0.73 and row["seeds_needed"] == 8 and row["n_seeds"] == 7
    assert row["what"] == ("random_encoder_frozen vs 0.9 × scratch (claim 4: 93.5% of a scratch Dice of 0.673, i.e. "
                           "0.024 Dice above 90%; sd √(1 + 0.9²) × run sd)")
    # without it, the arm is sized for the block's plain difference (0.03 Dice: 0.87 with 7 seeds)
    plain = load_study(write_study(tmp_path, tiny_study(power={**block, "reference_dice": None}, pretraining=[],
                                                        finetune=grid), "plain.yaml"))
    assert round(comparison_powers(plain)[0]["power"], 2) == 0.87
    few = load_study(write_study(tmp_path, tiny_study(power=block, pretraining=[], finetune={**grid, "seeds": [0, 1, 2]}),
                                 "few.yaml"))
    assert power_lines(few) == [
        "warning: power 0.22 for random_encoder_frozen vs 0.9 × scratch (claim 4: 93.5% of a scratch Dice of 0.673, "
        "i.e. 0.024 Dice above 90%; sd √(1 + 0.9²) × run sd) with 3 seeds (run sd 0.015, alpha 0.05); power 0.8 "
        "needs 8 seeds"]


def test_the_power_block_is_not_part_of_the_content_hash(tmp_path, medtransfer_home):
    with_block = load_study(_study(tmp_path))
    without = load_study(write_study(tmp_path, {**tiny_study(), "finetune": {**tiny_study()["finetune"],
                                                                             "seeds": [0, 1, 2]}}, "b.yaml"))
    assert with_block.content_hash == without.content_hash and with_block.power["equivalence"] == ["decoder"]


@pytest.mark.parametrize("block, message", [
    ({"run_sd": -0.01, "effect": 0.03}, "power.run_sd: must be a number in (0, ∞), got -0.01"),
    ({"run_sd": "a lot", "effect": 0.03}, "power.run_sd: 'a lot' is not a number"),
    ({"effect": 0.03}, "power.run_sd: required"),
    ({"run_sd": 0.015}, "power: give `effect`"),
    ({"run_sd": 0.015, "effect": 0.03, "alpha": 5}, "power.alpha: must be a number in (0, 1), got 5"),
    ({"run_sd": 0.015, "effect": 0.03, "seeds": 5}, "power: unknown key(s) seeds"),
    ({"run_sd": 0.015, "effect": 0.03, "equivalence": ["decoder"]}, "power.equivalence: needs power.equivalence_margin"),
    ({"run_sd": 0.015, "equivalence_margin": 0.03, "equivalence": ["nope"]}, "power.equivalence: a list of strategies"),
    ({"run_sd": 0.015, "effect": 0.03, "reference_dice": 1.5}, "power.reference_dice: must be a number in (0, 1], "
                                                                "got 1.5"),
    ([0.015], "power: must be a mapping"),
])
def test_bad_power_blocks_are_refused_in_one_line_naming_the_key(block, message, tmp_path, medtransfer_home):
    with pytest.raises(StudyError) as error:
        parse_study(tiny_study(power=block), base=tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)
