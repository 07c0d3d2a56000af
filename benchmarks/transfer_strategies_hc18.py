"""Mechanics check of the transfer strategies on HC18 (2D ultrasound, real data).

A source model is trained on the full HC18 training split (or given with --source); then each strategy
fine-tunes at fraction 0.1 (7 images) for the same small number of epochs. Prints, per strategy, the test
Dice and the first epoch whose validation Dice reaches 90 % of that run's final validation Dice.
    python benchmarks/transfer_strategies_hc18.py [--source runs/x/model.pt] [--epochs 8] [--output runs/bench_transfer]
This is a sanity check of the machinery, not the study: one seed, one fraction.
"""

import argparse
import json
from pathlib import Path

from _common import DATA, Stopwatch, workflow

from medtransfer.transfer import STRATEGIES


def epochs_to_90_percent(history: list[dict]) -> int | None:
    final = history[-1]["val_dice"]
    return next((h["epoch"] for h in history if h["val_dice"] >= 0.9 * final), None)


def run(output: Path, configs, **overrides) -> dict:
    if not (output / "run.json").exists() or json.loads((output / "run.json").read_text())["status"] != "finished":
        workflow(2, configs=configs, output_dir=str(output), **overrides).run()
    return json.loads((output / "run.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="source weights; default: train one on the full HC18 training split")
    parser.add_argument("--source-epochs", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--iterations-per-epoch", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--output", default="runs/bench_transfer_hc18")
    parser.add_argument("--data-root", default=str(DATA / "hc18_fetal_head"))
    args = parser.parse_args()
    output = Path(args.output)
    data = {"data_manifest": "hc18_fetal_head", "data_root": args.data_root}
    source = args.source
    if source is None:
        record = run(output / "source_full", ("train.yaml",), fraction=1.0, max_epochs=args.source_epochs, **data)
        source = str(output / "source_full" / "model.pt")
        print(f"source: full training split, {args.source_epochs} epochs, test Dice {record['metrics']['mean_dice']:.4f}")
    rows = []
    for strategy in STRATEGIES:
        extra = {"source_checkpoint": source} if STRATEGIES[strategy].needs_checkpoint else {}
        with Stopwatch() as watch:
            record = run(output / strategy, ("train.yaml", f"transfer/{strategy}.yaml"), fraction=args.fraction,
                         max_epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch, **data, **extra)
        rows.append({
            "strategy": strategy,
            "test_dice": round(record["metrics"]["mean_dice"], 4),
            "test_hd95": round(record["metrics"]["mean_hd95"], 2),
            "final_val_dice": round(record["val_history"][-1]["val_dice"], 4),
            "epoch_to_90pct_of_final": epochs_to_90_percent(record["val_history"]),
            "val_dice_per_epoch": [round(h["val_dice"], 3) for h in record["val_history"]],
            "seconds": round(watch.seconds, 1),
        })
    print(f"fraction {args.fraction} ({record['data']['n_training']} images), {args.epochs} epochs x "
          f"{args.iterations_per_epoch} iterations, seed 0")
    print(f"{'strategy':<24}{'test Dice':>10}{'HD95':>8}{'ep→90%':>8}  val Dice per epoch")
    for row in rows:
        print(f"{row['strategy']:<24}{row['test_dice']:>10.4f}{row['test_hd95']:>8.1f}"
              f"{row['epoch_to_90pct_of_final']:>8}  {row['val_dice_per_epoch']}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
