"""Seed-to-seed spread of planned runs (issue 25): one line per run, then the seed-level mean with its t-interval.

    python benchmarks/plan_seeds.py RUN_DIR [RUN_DIR ...] [--json OUT]

Each RUN_DIR is a finished `medtransfer train --plan ...` folder. Runs are grouped by (data manifest, fraction, plan
sha256); within a group the unit of replication is the run (seed): its mean test Dice over the test cases, so
the interval is `medtransfer.evaluation.statistics.mean_ci` over seeds (t quantile with n-1 degrees of freedom),
never over (case, seed) pairs. The seed sd printed here is what `studies/*.yaml` size their seeds from
(`medtransfer.evaluation.power`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medtransfer.evaluation.statistics import mean_ci  # noqa: E402


def read_run(folder: Path) -> dict:
    record = json.loads((folder / "run.json").read_text())
    if record.get("status") != "finished" or "metrics" not in record:
        raise SystemExit(f"{folder}/run.json: not a finished, evaluated run (status {record.get('status')!r})")
    config, metrics = record["config"], record["metrics"]
    converged = record.get("converged") or {}
    return {"run": folder.name, "manifest": (record.get("data") or {}).get("manifest"),
            "fraction": config.get("fraction"), "seed": config.get("seed"), "plan": (config.get("plan") or "")[:12],
            "test_dice": metrics["mean_dice"], "hd95": metrics.get("mean_hd95"), "n_test": metrics.get("n_test_cases"),
            "best_val_dice": record.get("best_val_dice"), "best_epoch": record.get("best_epoch"),
            "epochs": record.get("epochs"), "converged": converged.get("value"), "reason": converged.get("reason"),
            "wall_seconds": record.get("wall_time_seconds"), "validation_share": record.get("validation_share")}


def plot_curves(folders: list[Path], output: Path) -> None:
    """Validation Dice against training iterations (so plans with other epoch lengths line up), one panel per
    data set, one colour per fraction, one line style per plan; one legend entry per (fraction, plan) group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads((folder / "run.json").read_text()) for folder in folders]
    manifests = sorted({(r.get("data") or {}).get("manifest") for r in records})
    figure, axes = plt.subplots(1, len(manifests), figsize=(5.5 * len(manifests), 4.2), squeeze=False)
    for axis, manifest in zip(axes[0], manifests):
        members = [r for r in records if (r.get("data") or {}).get("manifest") == manifest]
        fractions = sorted({float(r["config"].get("fraction")) for r in members})
        plans = sorted({str((r.get("plan") or {}).get("sha256", ""))[:12] for r in members})
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for record in members:
            groups[(float(record["config"].get("fraction")), str((record.get("plan") or {}).get("sha256", ""))[:12])
                   ].append(record)
        for (fraction, plan), group in sorted(groups.items()):
            colour = plt.cm.viridis(0.85 * fractions.index(fraction) / max(1, len(fractions) - 1))
            style = ("-", "--", ":")[plans.index(plan) % 3]
            dice = [r["metrics"]["mean_dice"] for r in group]
            unconverged = sum(not (r.get("converged") or {}).get("value") for r in group)
            group_label = (f"fraction {fraction:g}{f', plan {plan}' if len(plans) > 1 else ''}: "
                           f"{len(group)} seed(s), test {statistics.fmean(dice):.3f}"
                           f"{f', {unconverged} not converged' if unconverged else ''}")
            for i, record in enumerate(group):
                history = record.get("val_history") or []
                per_epoch = int(record["config"].get("iterations_per_epoch") or 1)
                label = None if i else group_label
                axis.plot([h["epoch"] * per_epoch for h in history], [h["val_dice"] for h in history], lw=1.0,
                          color=colour, ls=style, alpha=0.85, label=label)
        axis.set(title=f"{manifest} (planned, scratch)", xlabel="training iterations", ylabel="validation Dice",
                 ylim=(0, 1))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7.5, loc="lower right")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)


def summarise(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["manifest"], run["fraction"], run["plan"])].append(run)
    out = []
    for (manifest, fraction, plan), members in sorted(groups.items(), key=lambda item: str(item[0])):
        dice = [m["test_dice"] for m in members]
        ci = mean_ci(dice)
        out.append({"manifest": manifest, "fraction": fraction, "plan": plan, "seeds": [m["seed"] for m in members],
                    "mean": ci.get("mean"), "ci_low": ci.get("ci_low"), "ci_high": ci.get("ci_high"),
                    "seed_sd": statistics.stdev(dice) if len(dice) > 1 else None,
                    "converged": sum(bool(m["converged"]) for m in members), "n": len(members),
                    "wall_minutes": [round(m["wall_seconds"] / 60, 1) for m in members if m["wall_seconds"]]})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, help="PNG: validation Dice per epoch of every run, one panel per data set")
    args = parser.parse_args(argv)
    runs = [read_run(folder) for folder in args.runs]
    if args.plot:
        plot_curves(args.runs, args.plot)
    for run in runs:
        print(f"{run['run']}: {run['manifest']} f{run['fraction']} seed {run['seed']}: test Dice {run['test_dice']:.4f} "
              f"({run['n_test']} cases), HD95 {run['hd95']:.1f}, best val {run['best_val_dice']:.4f} at epoch "
              f"{run['best_epoch']}/{run['epochs']}, converged {run['converged']} ({run['reason']}), "
              f"{run['wall_seconds'] / 60:.1f} min, validation {100 * (run['validation_share'] or 0):.1f} %")
    groups = summarise(runs)
    for group in groups:
        interval = (f"95 % CI {group['ci_low']:.4f}–{group['ci_high']:.4f}" if group["ci_low"] is not None
                    else "no interval (fewer than 2 seeds)")
        sd = f"{group['seed_sd']:.4f}" if group["seed_sd"] is not None else "n/a"
        print(f"{group['manifest']} f{group['fraction']} plan {group['plan']}: {group['n']} seeds {group['seeds']}, "
              f"mean test Dice {group['mean']:.4f} ({interval} over seeds), seed sd {sd}, "
              f"{group['converged']}/{group['n']} converged, wall {group['wall_minutes']} min")
    result = {"runs": runs, "groups": groups}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
