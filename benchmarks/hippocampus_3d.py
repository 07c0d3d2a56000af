"""Full-data 3D training on MSD Hippocampus (binary: anterior + posterior merged) with the 3D bundle.

Prints the test Dice / HD95 reached and the wall time per epoch on this machine.
    python benchmarks/hippocampus_3d.py --max-epochs 40 --iterations-per-epoch 50 --output runs/bench_hippo3d
Published nnU-Net results on MSD Task04 are ~0.89-0.90 Dice *per structure* (anterior, posterior) after
1000 epochs x 250 iterations on a GPU; this runs a few thousand CPU iterations of a smaller network.
"""

import argparse
import json
import statistics

from _common import DATA, Stopwatch, workflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--iterations-per-epoch", type=int, default=50)
    parser.add_argument("--output", default="runs/bench_hippocampus_3d")
    parser.add_argument("--data-root", default=str(DATA / "msd_hippocampus"))
    args = parser.parse_args()
    flow = workflow(
        3,
        data_manifest="msd_hippocampus",
        data_root=args.data_root,
        fraction=1.0,
        max_epochs=args.max_epochs,
        iterations_per_epoch=args.iterations_per_epoch,
        output_dir=args.output,
        val_interval=5,
    )
    with Stopwatch() as total:
        flow.run()
    record = json.loads(open(f"{args.output}/run.json").read())
    epochs = record["seconds_per_epoch"]
    print(json.dumps({
        "benchmark": "hippocampus_3d",
        "n_training": record["data"]["n_training"],
        "n_test": record["metrics"]["n_test_cases"],
        "epochs": record["epochs"],
        "iterations": record["iterations"],
        "test_mean_dice": round(record["metrics"]["mean_dice"], 4),
        "test_mean_hd95_mm": round(record["metrics"]["mean_hd95"], 3),
        "best_epoch": record["best_epoch"],
        "best_val_dice": round(record["best_val_dice"], 4),
        "median_seconds_per_epoch": round(statistics.median(epochs), 2),
        "seconds_per_iteration": round(statistics.median(epochs) / args.iterations_per_epoch, 3),
        "total_wall_seconds": round(total.seconds, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
