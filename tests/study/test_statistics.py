"""The report's statistics against hand-computed and scipy values."""

import math

import numpy as np
import pytest
from scipy import stats

from medtransfer.study.report import epochs_to_fraction, holm, mean_ci, paired_wilcoxon


def test_holm_matches_a_hand_example():
    # sorted p: 0.01 (×4 = 0.04), 0.02 (×3 = 0.06), 0.03 (×2 = 0.06), 0.04 (×1 = 0.04 → monotone 0.06)
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([None, 0.01, float("nan")]) == [None, 0.01, None]  # missing tests are not counted
    assert holm([]) == []


def test_mean_ci_uses_the_t_distribution():
    values = [0.6, 0.7, 0.8, 0.75]
    out = mean_ci(values)
    half = stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2
    assert out["mean"] == pytest.approx(0.7125) and out["ci_high"] - out["mean"] == pytest.approx(half)
    assert mean_ci([0.5])["ci_low"] is None and mean_ci([])["mean"] is None
    assert mean_ci([0.5, float("nan"), 0.7])["n"] == 2


def test_paired_wilcoxon_pairs_by_key():
    a = {("c1", 0): 0.8, ("c2", 0): 0.7, ("c3", 0): 0.9, ("c1", 1): 0.85, ("c2", 1): 0.6, ("extra", 0): 0.1}
    b = {("c1", 0): 0.7, ("c2", 0): 0.72, ("c3", 0): 0.6, ("c1", 1): 0.7, ("c2", 1): 0.55}
    out = paired_wilcoxon(a, b)
    keys = sorted(b)
    expected = stats.wilcoxon([a[k] - b[k] for k in keys])
    assert out["n_pairs"] == 5 and out["p"] == pytest.approx(expected.pvalue)
    assert paired_wilcoxon({1: 0.5, 2: 0.5}, {1: 0.5, 2: 0.5})["p"] == 1.0  # no difference at all
    assert paired_wilcoxon({1: 0.5}, {1: 0.4})["p"] is None


def test_epochs_to_90_percent_of_final_validation_dice():
    history = [{"epoch": e, "val_dice": v} for e, v in enumerate([0.1, 0.5, 0.85, 0.95, 0.9], start=1)]
    assert epochs_to_fraction(history) == 3  # 0.85 ≥ 0.9 × 0.9 = 0.81
    assert epochs_to_fraction([]) is None
    assert math.isclose(epochs_to_fraction([{"epoch": 1, "val_dice": 0.0}]), 1)


def test_slices_of_one_volume_are_one_observation():
    from medtransfer.study.report import analyse

    def row(strategy, case, volume, seed, dice):
        return {"objective": "none" if strategy == "scratch" else "src", "strategy": strategy, "fraction": 0.1,
                "seed": seed, "case": case, "volume": volume, "dice": dice, "checkpoint_epoch": ""}

    rows = []
    for seed in (0, 1):
        for strategy, shift in (("scratch", 0.0), ("encoder", 0.1)):
            rows += [row(strategy, "a_1", "a", seed, 0.5 + shift), row(strategy, "a_2", "a", seed, 0.7 + shift),
                     row(strategy, "a_3", "a", seed, 0.9 + shift), row(strategy, "b_1", "b", seed, 0.4 + shift)]
    rows.append({**row("encoder", "x", "", 0, 0.0), "checkpoint_epoch": 3})  # a checkpoint fine-tune: not in the table
    result = analyse(rows, {})
    assert result["unit"] == "volume"
    scratch = next(r for r in result["table"] if r["strategy"] == "scratch")
    assert scratch["n"] == 4 and abs(scratch["mean"] - (0.7 + 0.4) / 2) < 1e-9  # (volume, seed) means
    test = result["tests"][0]
    assert test["n_pairs"] == 4 and abs(test["mean_diff"] - 0.1) < 1e-9
    assert analyse([{**r, "volume": ""} for r in rows[:-1]], {})["table"][0]["n"] == 8  # 3D cases: per case
