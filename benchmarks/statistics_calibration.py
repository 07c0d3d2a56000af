"""Calibration of the study statistics: false-positive rate (true null) and power (+0.03 Dice) of the OLD test
(paired Wilcoxon over (case, seed) pairs) and the NEW one (paired t-test over seeds, medtransfer.evaluation.statistics)
on simulated studies with case heterogeneity and a run-level (seed) random effect.

    python benchmarks/statistics_calibration.py [--studies 1000] [--cases 20] [--seed 0]

Model (medtransfer.evaluation.statistics.simulated_results): Dice = 0.75 + case difficulty (sd 0.10, shared by both
arms) + a seed effect both arms of a seed share (sd 0.02) + a run offset per arm and seed (sd 0, 0.01, 0.03) +
noise per (arm, case, seed) (sd 0.05) [+ effect]. Goal: every new false-positive rate in [0.02, 0.08]. With 2
seeds the new method gives no p-value ("too few seeds for a seed-level test"), shown as "no test".

Also: the issue's BUS-BRA → BUSI example (3 seeds, per-seed differences +0.044, +0.140, +0.053, 129 cases) as a
simulated table, old p against new p; and, outside the method's scope, a population-level null with a per-case
strategy effect (the seed-level test answers "on this test set", so it rejects there more often).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medtransfer.evaluation.statistics import (paired_over_seeds, paired_wilcoxon, rejection_rates,  # noqa: E402
                                               unit_observations)


def _rate(value) -> str:
    return "no test" if value is None else f"{value:.3f}"


def busbra_example(rng: np.random.Generator, diffs=(0.044, 0.140, 0.053), n_cases: int = 129,
                   case_sd: float = 0.15, noise_sd: float = 0.16) -> dict:
    """A table like the issue's: per-seed mean differences exactly `diffs`, case-level spread like real Dice."""
    case = rng.normal(0.0, case_sd, n_cases)
    rows = []
    for seed, diff in enumerate(diffs):
        noise = rng.normal(0.0, noise_sd, n_cases)
        noise -= noise.mean()  # the seed's mean difference is exactly `diff`
        scratch = 0.6 + case + rng.normal(0.0, 0.02)
        for strategy, dice in (("scratch", scratch), ("encoder", scratch + diff + noise)):
            rows += [{"objective": "", "strategy": strategy, "fraction": 0.05, "seed": seed, "case": f"c{i}",
                      "dice": float(d)} for i, d in enumerate(dice)]
    cells = unit_observations(rows)
    arm, baseline = cells[("", "encoder", 0.05)], cells[("", "scratch", 0.05)]
    return {"old": paired_wilcoxon(arm, baseline), "new": paired_over_seeds(arm, baseline)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000, help="simulated studies per setting (≥ 500)")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    print(f"{args.studies} simulated studies per setting, {args.cases} test cases, α = 0.05\n")
    print("| seeds | run sd | FPR old (Wilcoxon, pairs) | FPR new (t over seeds) | power old | power new (+0.03) |")
    print("|---:|---:|---:|---:|---:|---:|")
    worst = []
    for seeds in (2, 3, 5):
        for run_sd in (0.0, 0.01, 0.03):
            null = rejection_rates(rng, args.studies, n_cases=args.cases, n_seeds=seeds, run_sd=run_sd)
            power = rejection_rates(rng, args.studies, n_cases=args.cases, n_seeds=seeds, run_sd=run_sd, effect=0.03)
            if null["new"] is not None:
                worst.append(null["new"])
            print(f"| {seeds} | {run_sd:g} | {_rate(null['old'])} | {_rate(null['new'])} | {_rate(power['old'])} | "
                  f"{_rate(power['new'])} |", flush=True)
    inside = all(0.02 <= rate <= 0.08 for rate in worst)
    print(f"\nnew FPR range {min(worst):.3f}–{max(worst):.3f}: {'inside' if inside else 'OUTSIDE'} [0.02, 0.08]")

    print("\nOutside the scope (population null, per-case strategy effect sd 0.02, run sd 0.01, 3 seeds):")
    scope = rejection_rates(rng, args.studies, n_cases=args.cases, n_seeds=3, run_sd=0.01, interaction_sd=0.02)
    print(f"  rejection rate old {scope['old']:.3f}, new {scope['new']:.3f} (the new test's question is this test set)")

    example = busbra_example(np.random.default_rng(args.seed))
    old, new = example["old"], example["new"]
    print(f"\nBUS-BRA → BUSI-like table (3 seeds × 129 cases, per-seed Δ "
          f"{', '.join(f'{d:+.3f}' for d in new['per_seed'].values())}):")
    print(f"  old: paired Wilcoxon over {old['n_pairs']} pairs, p = {old['p']:.2e}")
    print(f"  new: {new['method']}, Δ = {new['estimate']:+.3f} [{new['ci_low']:+.3f}, {new['ci_high']:+.3f}], "
          f"p = {new['p']:.3f}")
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0 if inside else 1


if __name__ == "__main__":
    sys.exit(main())
