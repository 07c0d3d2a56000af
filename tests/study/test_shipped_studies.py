"""The shipped cross-dataset study files parse against the real data and expand to the design they describe."""

from collections import Counter
from pathlib import Path

import pytest

from medtransfer import registry
from medtransfer.study.spec import load_study

STUDIES = registry.bundles_dir().parent / "studies"


@pytest.mark.parametrize("name, fine_tunes, seeds, fractions", [
    # decoder and full from the classification source are not planned: it trains only the encoder
    ("breast_us_cross_dataset", 162 - 2 * 3 * 3 + 48, 3, [0.05, 0.25, 1.0]),
    ("breast_us_cross_dataset_full", 450 - 2 * 5 * 5 + 100, 5, [0.05, 0.1, 0.25, 0.5, 1.0]),
])
def test_cross_dataset_study_pretrains_on_busbra_and_fine_tunes_on_busi(name, fine_tunes, seeds, fractions, test_data):
    spec = load_study(STUDIES / f"{name}.yaml", data_root=str(test_data))  # one root: the folder of data sets
    runs = spec.expand()
    kinds = Counter(run.kind for run in runs)
    assert kinds == {"pretrain": 4, "finetune": fine_tunes}
    pretrain = [run for run in runs if run.kind == "pretrain"]
    assert {Path(run.config_files[-1]).stem for run in pretrain} == {
        "segmentation", "classification", "reconstruction", "contrastive_reconstruction"}
    assert {run.source for run in pretrain} == {"busbra_breast_us_lesions"}
    assert spec.target.name == "busi_breast_us_lesions"
    tunes = [run for run in runs if run.kind == "finetune"]
    assert {run.seed for run in tunes} == set(range(seeds))
    assert sorted({run.fraction for run in tunes}) == fractions
    assert {run.strategy for run in tunes} == {"scratch", "encoder", "decoder", "full", "encoder_frozen",
                                              "random_encoder_frozen"}


@pytest.mark.parametrize("name, scale", [("breast_us_random_frozen_wide", 2.0), ("breast_us_random_frozen_narrow", 0.5)])
def test_random_frozen_at_other_widths_differs_from_the_converged_study_in_width_only(name, scale, test_data):
    """Claim 4 at another width is fair only if nothing but `filters` differs from the converged study's arms."""
    plan_width = load_study(STUDIES / "breast_us_converged.yaml", data_root=str(test_data))
    wide = load_study(STUDIES / f"{name}.yaml", data_root=str(test_data))
    assert wide.target.digest == plan_width.target.digest and wide.finetune_settings == plan_width.finetune_settings
    assert {k: v for k, v in wide.settings.items() if k != "filters"} == plan_width.settings  # the plan included
    from medtransfer.planning import load_plan

    planned = load_plan(plan_width.settings["plan"])["bundle_keys"]["filters"]
    assert "filters" not in plan_width.settings and wide.settings["filters"] == [int(scale * f) for f in planned]
    runs = wide.expand()
    assert {(run.kind, run.strategy, run.fraction) for run in runs} == {
        ("finetune", s, 0.05) for s in ("scratch", "random_encoder_frozen")}
    assert len(runs) == 14 and set(plan_width.seeds) == {run.seed for run in runs} == set(range(7))


def test_converged_study_runs_its_key_cells_on_the_busi_plan_with_seeds_sized_by_power(test_data):
    from medtransfer.evaluation.power import difference_power, sd_diff_from_run_sd, tost_power

    spec = load_study(STUDIES / "breast_us_converged.yaml", data_root=str(test_data))
    runs = spec.expand()
    assert Counter(run.kind for run in runs) == {"pretrain": 1, "finetune": 28}
    plan = STUDIES / "plans" / "busi_breast_us_lesions.json"
    assert spec.settings["plan"] == str(plan.resolve())  # relative to the study file
    tunes = [run for run in runs if run.kind == "finetune"]
    assert {(run.strategy, run.fraction) for run in tunes} == {
        (s, 0.05) for s in ("scratch", "encoder", "decoder", "random_encoder_frozen")}
    seeds = len({run.seed for run in tunes})
    sd = sd_diff_from_run_sd(spec.power["run_sd"])
    # the numbers the file's comment states
    assert seeds == 7 and round(difference_power(seeds, sd, 0.03, 0.05), 2) == 0.87
    assert round(tost_power(seeds, sd, 0.03, 0.0, 0.05), 2) == 0.90


@pytest.mark.parametrize("name, plan", [
    ("hc18_lowdata", "hc18_fetal_head.json"),
    ("hippocampus_lowdata", "msd_hippocampus.json"),
    ("breast_us_converged", "busi_breast_us_lesions.json"),
    ("breast_us_cross_dataset_full", "busi_breast_us_lesions.json"),
])
def test_shipped_real_data_studies_train_every_run_on_their_data_sets_plan(name, plan, test_data):
    """Issue 25: the full real-data studies adopt the plan, so no arm is cut off by a fixed epoch budget."""
    from medtransfer.planning import load_plan

    spec = load_study(STUDIES / f"{name}.yaml", data_root=str(test_data))
    path = (STUDIES / "plans" / plan).resolve()
    assert spec.settings["plan"] == str(path)
    assert load_plan(path)["bundle_keys"]["augmentation"] == "nnunet"
    runs = spec.expand()
    assert runs and all(run.args.get("plan") == str(path) for run in runs)
    planned_epochs = load_plan(path)["bundle_keys"]["max_epochs"]
    # fine-tunes run to the plan's budget and early stopping; only pretrainings may set their own epochs
    assert {run.max_epochs for run in runs if run.kind == "finetune"} == {planned_epochs}
    assert "iterations_per_epoch" not in spec.settings and "max_epochs" not in spec.settings
