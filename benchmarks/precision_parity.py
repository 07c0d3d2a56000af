"""Does mixed precision change the result? The same real cell trained in fp32 and in `auto`, paired by seed.

    python benchmarks/precision_parity.py [--seeds 0 1 2] [--fraction 0.25] [--epochs 8] [--output runs/parity]

HC18 (2D ultrasound) at `--fraction`, the 2D bundle's defaults otherwise; every seed trains once per precision
(interleaved, so load on the machine hits both alike) and is tested on the full test split. Reports the test-Dice
difference auto - fp32:
- per seed: the mean over test cases of the per-case difference (same cases, same seed: paired);
- the estimate and its 95 % CI from a paired t over the per-seed mean differences (the seed is the unit of
  replication; the cases of one seed are not independent observations), with the case-level spread alongside.
Rule (issue 15): `auto` stays the default only if that CI lies within +-0.01 Dice. Also prints the wall time per
run, so the speed-up is measured on the same runs. Finished runs are reused when the script is run again.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch
from scipy import stats

from _common import DATA, Stopwatch, workflow

MARGIN = 0.01


def paired_t(differences: list[float], confidence: float = 0.95) -> dict:
    """Mean of per-seed differences with a t confidence interval (n - 1 degrees of freedom)."""
    n = len(differences)
    mean = statistics.fmean(differences)
    if n < 2:
        return {"n_seeds": n, "mean": mean, "ci": [math.nan, math.nan], "p": math.nan}
    se = statistics.stdev(differences) / math.sqrt(n)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * se
    p = 2 * stats.t.sf(abs(mean) / se, n - 1) if se > 0 else (0.0 if mean else 1.0)
    return {"n_seeds": n, "mean": mean, "ci": [float(mean - half), float(mean + half)], "p": float(p)}


def train(output: Path, precision: str, seed: int, args) -> dict:
    record_path = output / "run.json"
    if not (record_path.exists() and json.loads(record_path.read_text()).get("status") == "finished"):
        flow = workflow(
            2, output_dir=str(output), data_manifest="hc18_fetal_head", data_root=args.data_root,
            fraction=args.fraction, seed=seed, precision=precision, max_epochs=args.epochs,
            iterations_per_epoch=args.iterations_per_epoch, progress=False,
        )
        with Stopwatch() as watch:
            flow.run()
        print(f"{output.name}: {watch.seconds:.0f} s", flush=True)
    return json.loads(record_path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--iterations-per-epoch", type=int, default=10)
    parser.add_argument("--output", default="runs/precision_parity")
    parser.add_argument("--data-root", default=str(DATA / "hc18_fetal_head"))
    parser.add_argument("--threads", type=int, help="torch threads (1 is steadier on cores shared with others)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    output = Path(args.output)

    records = {}
    for seed in args.seeds:
        for precision in ("fp32", "auto"):
            records[precision, seed] = train(output / f"{precision}_seed{seed}", precision, seed, args)

    used = records["auto", args.seeds[0]]["config"]["precision"]
    per_seed, case_differences = [], []
    rows = []
    for seed in args.seeds:
        reference, mixed = records["fp32", seed], records["auto", seed]
        fp32_cases = {case["case"]: case["dice"] for case in reference["per_case"]}
        auto_cases = {case["case"]: case["dice"] for case in mixed["per_case"]}
        if set(fp32_cases) != set(auto_cases):
            raise SystemExit(f"seed {seed}: the two runs were tested on different cases")
        differences = [auto_cases[c] - fp32_cases[c] for c in sorted(fp32_cases)]
        case_differences += differences
        per_seed.append(statistics.fmean(differences))
        rows.append({
            "seed": seed, "fp32_dice": reference["metrics"]["mean_dice"], "auto_dice": mixed["metrics"]["mean_dice"],
            "difference": per_seed[-1], "fp32_seconds": reference["wall_time_seconds"],
            "auto_seconds": mixed["wall_time_seconds"],
        })
    result = paired_t(per_seed)
    within = result["n_seeds"] >= 2 and bool(-MARGIN <= result["ci"][0] and result["ci"][1] <= MARGIN)
    summary = {
        "cell": f"hc18_fetal_head fraction {args.fraction}, {args.epochs} x {args.iterations_per_epoch} iterations",
        "auto_resolved_to": used,
        "per_seed": rows,
        "difference_auto_minus_fp32": result,
        "case_level": {"n": len(case_differences), "mean": statistics.fmean(case_differences),
                       "sd": statistics.stdev(case_differences) if len(case_differences) > 1 else math.nan},
        "speedup_wall": statistics.fmean(r["fp32_seconds"] for r in rows)
        / statistics.fmean(r["auto_seconds"] for r in rows),
        "margin": MARGIN,
        "auto_within_margin": within,
        "verdict": "auto stays the default" if within else "CI not within +-0.01 Dice: fp32 must be the default",
    }
    print(json.dumps(summary, indent=2))
    (output / "parity.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
