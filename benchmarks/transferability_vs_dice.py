"""Does a checkpoint's transferability score predict the Dice it reaches after fine-tuning?

1. Pretrain a small 3D U-Net by reconstruction (Models Genesis corruptions, no labels) on MSD Hippocampus
   training images, writing checkpoints at --checkpoint-epochs (>= 5 of them).
2. Score every checkpoint on the target (Hippocampus validation split, a seeded sample of 16 volumes,
   padded/cropped to 40×56×40): robustness score on the flattened deepest-skip map (pool=False: with
   DynUNet's instance norm the pooled score sits at the margin) and LogME.
3. Fine-tune each checkpoint with the `encoder` strategy on fraction 0.05 of the training cases; test Dice.
4. Spearman(score, Dice). Robustness is lower-is-better, so a useful score has rho < 0; LogME rho > 0.

    python benchmarks/transferability_vs_dice.py --output runs/bench_transferability
Defaults take about 3–4 min on 2 CPU cores (shorter schedules give fine-tuned Dice too erratic to correlate);
scale --pretrain-iterations / --finetune-epochs up on a GPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import DATA, Stopwatch, workflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/bench_transferability")
    parser.add_argument("--data-root", default=str(DATA / "msd_hippocampus"))
    parser.add_argument("--filters", default="8,16,32,64")
    parser.add_argument("--checkpoint-epochs", default="1,2,4,6,8,10")
    parser.add_argument("--pretrain-iterations", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument("--finetune-iterations", type=int, default=15)
    parser.add_argument("--fraction", type=float, default=0.05)
    args = parser.parse_args()
    filters = [int(v) for v in args.filters.split(",")]
    schedule = [int(v) for v in args.checkpoint_epochs.split(",")]
    out = Path(args.output)
    common = dict(data_manifest="msd_hippocampus", data_root=args.data_root, filters=filters,
                  patch_size=[32, 48, 32], batch_size=2, num_workers=0)

    from medtransfer.analysis.checkpoint_scores import score_checkpoints, spearman_with_dice

    pre = out / "pretrain"
    with Stopwatch() as pretrain_time:
        if not (pre / "pretrained.pt").is_file():
            workflow(3, ("train.yaml", "pretrain.yaml", "pretrain/reconstruction.yaml"), **common, output_dir=str(pre),
                     max_epochs=max(schedule), iterations_per_epoch=args.pretrain_iterations,
                     checkpoint_epochs=schedule).run()
    with Stopwatch() as score_time:
        scores = score_checkpoints(pre, "msd_hippocampus", split="validation", n_images=16,
                                   spatial_size=[40, 56, 40], pool=False, data_root=args.data_root)
    dice, finetune_seconds = {}, 0.0
    for row in scores["checkpoints"]:
        run = out / f"finetune_epoch_{row['epoch']:04d}"
        with Stopwatch() as t:
            if not (run / "run.json").is_file() or "metrics" not in json.loads((run / "run.json").read_text()):
                workflow(3, ("train.yaml", "transfer/encoder.yaml"), **common, output_dir=str(run),
                         source_checkpoint=str(pre / row["path"]), fraction=args.fraction,
                         max_epochs=args.finetune_epochs, iterations_per_epoch=args.finetune_iterations,
                         val_interval=args.finetune_epochs).run()
        finetune_seconds += t.seconds
        dice[row["epoch"]] = json.loads((run / "run.json").read_text())["metrics"]["mean_dice"]
    print(f"{'epoch':>6} {'robustness':>11} {'LogME':>9} {'test Dice':>10}")
    for row in scores["checkpoints"]:
        logme = "" if row["logme"] is None else f"{row['logme']:.4f}"
        print(f"{row['epoch']:>6} {row['robustness']:>11.4f} {logme:>9} {dice[row['epoch']]:>10.4f}")
    result = {key: spearman_with_dice(scores, dice, key) for key in ("robustness", "logme")}
    for key, corr in result.items():
        print(f"Spearman({key}, Dice) = {corr['rho']} (p = {corr['p_value']}, n = {corr['n']})")
    print(f"wall time: pretraining {pretrain_time.seconds:.0f} s, scoring {score_time.seconds:.0f} s, "
          f"fine-tuning {finetune_seconds:.0f} s")
    (out / "transferability_vs_dice.json").write_text(json.dumps({"scores": scores, "dice": dice,
                                                                  "spearman": result}, indent=2))


if __name__ == "__main__":
    main()
