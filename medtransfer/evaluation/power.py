"""Power and seeds needed for the two designs a study tests, as `medtransfer.evaluation.statistics` tests them.

The unit of replication is the seed: a comparison of two arms is a paired t-test over the per-seed mean
differences (`paired_over_seeds`, two-sided, df = seeds − 1), and an equivalence claim ("decoder ≈ scratch")
is TOST over the same per-seed differences (`equivalence_over_seeds`: two one-sided t-tests at level alpha, i.e.
the 1 − 2·alpha interval inside ±margin). Below `MIN_SEEDS` seeds the project gives no test, so the power there is 0.

`sd_diff` is the sd of one per-seed difference between two arms. From the seed-to-seed sd of one arm's mean Dice
(`run_sd`, the `sd seeds` column of summary.md, measured at convergence), `sd_diff_from_run_sd(run_sd)` =
√2 · run_sd: the two arms of a seed are trained independently. It is conservative when the arms share a part of
their seed effect (the same fraction subset, the same initialisation of what is not transferred): that part
cancels in the pairing, so the true sd of the difference is smaller.

- difference: `difference_power(n, sd_diff, effect, alpha)`, statsmodels `TTestPower` (one-sample t on the
  differences, two-sided, standardised effect = effect / sd_diff); `seeds_for_difference(...)`.
- equivalence: `tost_power(n, sd_diff, margin, true_diff, alpha)`, exact: equivalence is shown when
  |mean − 0| < margin − t(1−α, n−1)·s/√n, so the power is the normal probability of the mean falling in that
  window, integrated over the χ²(n−1) distribution of the sample sd s (Owen's Q by quadrature). `method="nct"`
  gives the textbook approximation P(T₁ > t) + P(T₂ < −t) − 1 from two noncentral t's (scipy.stats.nct): it
  ignores that both tests share s, and is a lower bound of the exact power (0 or negative for small n).
  `seeds_for_equivalence(...)`.
- a correlation (`correlation_power`): a Spearman ρ tested against 0 over n checkpoints, Fisher z with
  Bonett–Wright's variance (1 + ρ²/2)/(n − 3), normal approximation.

`seeds_for_*` return the smallest whole number of seeds ≥ MIN_SEEDS reaching `power`, or None when no number up to
`max_seeds` does (an effect of 0, or a true difference at or beyond the equivalence margin).
"""

from __future__ import annotations

import math

from medtransfer.errors import MedtransferError
from medtransfer.evaluation.statistics import MIN_SEEDS

MAX_SEEDS = 10_000
TARGET_POWER = 0.8


class PowerError(MedtransferError, ValueError):
    """A power calculation asked with values it cannot use (sd ≤ 0, alpha outside (0, 1), …)."""


def _check(sd_diff: float, alpha: float, name: str = "sd_diff") -> None:
    if not (isinstance(sd_diff, (int, float)) and math.isfinite(sd_diff) and sd_diff > 0):
        raise PowerError(f"{name} must be a positive number, got {sd_diff!r}")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise PowerError(f"alpha must be in (0, 1), got {alpha!r}")


def _seeds(n_seeds) -> int:
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 0:
        raise PowerError(f"n_seeds must be a whole number ≥ 0, got {n_seeds!r}")
    return n_seeds


def sd_diff_from_run_sd(run_sd: float) -> float:
    """sd of a per-seed difference of two independently trained arms, each with seed-to-seed sd `run_sd`."""
    _check(run_sd, 0.05, "run_sd")
    return math.sqrt(2.0) * float(run_sd)


def difference_power(n_seeds: int, sd_diff: float, effect: float, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test over `n_seeds` per-seed differences (sd `sd_diff`) for a true mean
    difference `effect`; 0 below MIN_SEEDS (no test is made there)."""
    from scipy import stats
    from statsmodels.stats.power import TTestPower

    _check(sd_diff, alpha)
    if _seeds(n_seeds) < MIN_SEEDS:
        return 0.0
    value = float(TTestPower().power(effect_size=abs(effect) / sd_diff, nobs=n_seeds, alpha=alpha,
                                     alternative="two-sided"))
    if not math.isfinite(value):  # scipy's noncentral t gives NaN far in its tail, where the power is ~1
        shift, critical = abs(effect) / sd_diff * math.sqrt(n_seeds), float(stats.t.ppf(1 - alpha / 2, n_seeds - 1))
        value = float(stats.norm.sf(critical - shift) + stats.norm.cdf(-critical - shift))
    return value


def tost_power(n_seeds: int, sd_diff: float, margin: float, true_diff: float = 0.0, alpha: float = 0.05,
               method: str = "exact") -> float:
    """Power of TOST (two one-sided t-tests at level `alpha`, equivalence within ±`margin`) over `n_seeds`
    per-seed differences of sd `sd_diff` whose true mean is `true_diff`; 0 below MIN_SEEDS."""
    from scipy import integrate, stats

    _check(sd_diff, alpha)
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin > 0):
        raise PowerError(f"margin must be a positive number, got {margin!r}")
    if method not in ("exact", "nct"):
        raise PowerError(f"method must be 'exact' or 'nct', got {method!r}")
    n = _seeds(n_seeds)
    if n < MIN_SEEDS:
        return 0.0
    df = n - 1
    se = sd_diff / math.sqrt(n)
    critical = float(stats.t.ppf(1 - alpha, df))
    if method == "nct":
        lower = stats.nct.sf(critical, df, (true_diff + margin) / se)  # H0: diff ≤ −margin rejected
        upper = stats.nct.cdf(-critical, df, (true_diff - margin) / se)  # H0: diff ≥ +margin rejected
        # far in the tail scipy's nct gives NaN; there the normal probability is as good
        lower = lower if math.isfinite(lower) else stats.norm.sf(critical - (true_diff + margin) / se)
        upper = upper if math.isfinite(upper) else stats.norm.cdf(-critical - (true_diff - margin) / se)
        return float(max(0.0, lower + upper - 1.0))

    # s = sd_diff·sqrt(q/df) with q ~ χ²(df); equivalence when |mean| < margin − critical·s/√n
    q_max = df * (margin / (critical * se)) ** 2  # beyond it the window is empty

    def window(q: float) -> float:
        half = margin - critical * se * math.sqrt(q / df)
        return (stats.norm.cdf((half - true_diff) / se) - stats.norm.cdf((-half - true_diff) / se)) \
            * stats.chi2.pdf(q, df)

    value, _ = integrate.quad(window, 0.0, q_max, limit=200)
    return float(min(1.0, max(0.0, value)))


def _smallest(power_of, power: float, max_seeds: int) -> int | None:
    if not 0 < power < 1:
        raise PowerError(f"power must be in (0, 1), got {power!r}")
    low, high = MIN_SEEDS, MIN_SEEDS
    while power_of(high) < power:  # power grows with n for these designs: doubling, then bisection
        if high >= max_seeds:
            return None
        low, high = high + 1, min(max_seeds, high * 2)
    while low < high:
        middle = (low + high) // 2
        if power_of(middle) >= power:
            high = middle
        else:
            low = middle + 1
    return high


def seeds_for_difference(sd_diff: float, effect: float, alpha: float = 0.05, power: float = TARGET_POWER,
                         max_seeds: int = MAX_SEEDS) -> int | None:
    """Fewest seeds (≥ MIN_SEEDS) whose paired t-test has `power` for `effect`; None if none up to `max_seeds`."""
    _check(sd_diff, alpha)
    if effect == 0:
        return None
    return _smallest(lambda n: difference_power(n, sd_diff, effect, alpha), power, max_seeds)


def seeds_for_equivalence(sd_diff: float, margin: float, true_diff: float = 0.0, alpha: float = 0.05,
                          power: float = TARGET_POWER, max_seeds: int = MAX_SEEDS) -> int | None:
    """Fewest seeds (≥ MIN_SEEDS) whose TOST has `power`; None if none up to `max_seeds` (|true_diff| ≥ margin)."""
    _check(sd_diff, alpha)
    if abs(true_diff) >= margin:
        return None
    return _smallest(lambda n: tost_power(n, sd_diff, margin, true_diff, alpha), power, max_seeds)


def correlation_power(n: int, rho: float, alpha: float = 0.05) -> float:
    """Approximate power of a two-sided test of Spearman ρ = 0 over `n` pairs when the true ρ is `rho` (Fisher z,
    Bonett–Wright variance); 0 below 4 pairs (no variance)."""
    from scipy import stats

    _check(1.0, alpha)
    if not (isinstance(rho, (int, float)) and -1 < rho < 1):
        raise PowerError(f"rho must be in (−1, 1), got {rho!r}")
    if _seeds(n) < 4:
        return 0.0
    shift = abs(math.atanh(rho)) / math.sqrt((1 + rho ** 2 / 2) / (n - 3))
    critical = float(stats.norm.ppf(1 - alpha / 2))
    return float(stats.norm.sf(critical - shift) + stats.norm.cdf(-critical - shift))
