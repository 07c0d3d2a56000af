"""Power and seeds needed (medtransfer.evaluation.power): known values, and calibration by simulation of the tests
the project makes (paired t over per-seed differences; TOST over the same differences)."""

import math

import numpy as np
import pytest
from scipy import stats

from medtransfer.evaluation.power import (PowerError, correlation_power, difference_power, sd_diff_from_run_sd,
                                          seeds_for_difference, seeds_for_equivalence, tost_power)
from medtransfer.evaluation.statistics import equivalence_over_seeds, paired_over_seeds

N_SIM = 4000


def _tolerance(power: float) -> float:
    return 3 * math.sqrt(power * (1 - power) / N_SIM)


def test_sd_of_a_difference_of_two_independent_arms_is_root_two_run_sd():
    assert sd_diff_from_run_sd(0.015) == pytest.approx(0.0212132, abs=1e-6)
    with pytest.raises(PowerError, match="run_sd"):
        sd_diff_from_run_sd(0)


def test_difference_power_known_values_and_seeds_needed():
    # standardised effect 1 (0.03 / 0.03): power 0.401 with 5 seeds; 10 seeds give 0.803
    assert difference_power(5, 0.03, 0.03) == pytest.approx(0.4014, abs=2e-3)
    assert difference_power(10, 0.03, 0.03) == pytest.approx(0.8031, abs=2e-3)
    assert seeds_for_difference(0.03, 0.03) == 10
    assert difference_power(9, 0.03, 0.03) < 0.8 <= difference_power(10, 0.03, 0.03)
    assert difference_power(2, 0.03, 0.03) == 0.0  # below MIN_SEEDS the project makes no test
    assert seeds_for_difference(0.03, 0.0) is None
    assert seeds_for_difference(0.0212, 0.03) == 7  # run sd 0.015, +0.03
    assert difference_power(5, 0.03, -0.03) == difference_power(5, 0.03, 0.03)  # two-sided
    # where scipy's noncentral t returns NaN (standardised effect 4 with 8 seeds), the power is ~1, not NaN
    assert difference_power(8, 0.01, 0.04) == pytest.approx(1.0, abs=1e-6)
    assert tost_power(400, 0.01, 0.03, method="nct") == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(PowerError, match="sd_diff"):
        difference_power(5, -1, 0.03)
    with pytest.raises(PowerError, match="alpha"):
        difference_power(5, 0.03, 0.03, alpha=1.5)


def test_tost_power_known_values_and_the_nct_approximation_is_a_lower_bound():
    exact = tost_power(10, 0.03, 0.03)
    nct = tost_power(10, 0.03, 0.03, method="nct")
    assert exact == pytest.approx(0.7952, abs=2e-3) and nct <= exact and nct == pytest.approx(0.7950, abs=2e-3)
    assert tost_power(3, 0.03, 0.03, method="nct") == 0.0 < tost_power(3, 0.03, 0.03)
    assert tost_power(200, 0.03, 0.03, true_diff=0.03) == pytest.approx(0.05, abs=0.01)  # at the margin: alpha
    assert seeds_for_equivalence(0.03, 0.03) == 11
    assert tost_power(10, 0.03, 0.03) < 0.8 <= tost_power(11, 0.03, 0.03)
    assert seeds_for_equivalence(0.03, 0.03, true_diff=0.03) is None
    assert tost_power(2, 0.03, 0.03) == 0.0
    with pytest.raises(PowerError, match="margin"):
        tost_power(5, 0.03, 0)


@pytest.mark.parametrize("n_seeds, sd, effect", [(5, 0.03, 0.03), (8, 0.02, 0.015), (4, 0.01, 0.0)])
def test_difference_power_matches_the_rejection_rate_of_the_paired_t_test(n_seeds, sd, effect):
    rng = np.random.default_rng(2906)
    diffs = rng.normal(effect, sd, size=(N_SIM, n_seeds))
    rejected = stats.ttest_1samp(diffs, 0.0, axis=1).pvalue < 0.05
    power = difference_power(n_seeds, sd, effect) if effect else 0.05
    assert abs(rejected.mean() - power) <= _tolerance(power), (rejected.mean(), power)


@pytest.mark.parametrize("n_seeds, sd, margin, true_diff", [(6, 0.02, 0.03, 0.0), (10, 0.03, 0.03, 0.0),
                                                            (8, 0.02, 0.03, 0.01)])
def test_tost_power_matches_the_rejection_rate_of_tost(n_seeds, sd, margin, true_diff):
    rng = np.random.default_rng(2907)
    diffs = rng.normal(true_diff, sd, size=(N_SIM, n_seeds))
    lower = stats.ttest_1samp(diffs, -margin, axis=1, alternative="greater").pvalue
    upper = stats.ttest_1samp(diffs, margin, axis=1, alternative="less").pvalue
    rejected = np.maximum(lower, upper) < 0.05
    power = tost_power(n_seeds, sd, margin, true_diff)
    assert abs(rejected.mean() - power) <= _tolerance(power), (rejected.mean(), power)


def test_the_project_tests_are_the_ones_the_power_describes():
    """paired_over_seeds and equivalence_over_seeds on {(case, seed): Dice} give the t-test and TOST of the
    per-seed differences that the simulation above uses."""
    rng = np.random.default_rng(3)
    diffs = rng.normal(0.005, 0.01, 6)
    baseline = {(f"c{c}", s): 0.7 + 0.01 * c for c in range(4) for s in range(6)}
    arm = {(case, s): value + diffs[s] for (case, s), value in baseline.items()}
    t_test = paired_over_seeds(arm, baseline)
    assert t_test["p"] == pytest.approx(stats.ttest_1samp(diffs, 0).pvalue)
    tost = equivalence_over_seeds(arm, baseline, margin=0.03)
    p_tost = max(stats.ttest_1samp(diffs, -0.03, alternative="greater").pvalue,
                 stats.ttest_1samp(diffs, 0.03, alternative="less").pvalue)
    assert tost["p"] == pytest.approx(p_tost) and tost["p"] < 0.05
    assert -0.03 < tost["ci_low"] < tost["ci_high"] < 0.03  # the 90 % interval inside the margin
    assert tost["ci_high"] - tost["ci_low"] < t_test["ci_high"] - t_test["ci_low"]


def test_correlation_power_fisher_z():
    assert correlation_power(20, -0.45) == pytest.approx(0.4779, abs=2e-3)
    assert correlation_power(3, -0.45) == 0.0
    assert correlation_power(40, 0.45) == correlation_power(40, -0.45) > 0.8
