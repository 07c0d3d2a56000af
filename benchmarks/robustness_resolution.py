"""Can the robustness score (Hidy et al. 2024) tell a pretraining run's checkpoints apart? Resolution per representation.

For every checkpoint of a pretraining run (and the same network at its random initialisation, "epoch 0"),
the robustness score on a fixed sample of target images is computed with S scoring seeds (each seed draws other
augmentations and other negatives) and each candidate representation of the deepest skip level:

  output/pooled     the level's output, globally average-pooled (Hidy et al.'s choice, BatchNorm networks)
  output/flat       the level's output, flattened (medtransfer's default for DynUNet until now)
  pre_norm/pooled   the level's last spatial convolution before its (instance) normalisation, pooled
  pre_norm/flat     the same map, flattened

Printed per representation: the score per checkpoint (mean over seeds), the spread across checkpoints (sd of
those means), the scoring noise (mean over checkpoints of the sd across seeds) and their ratio; the goal is a
ratio ≥ 3. Usage:

  python benchmarks/robustness_resolution.py PRETRAIN_RUN --target data_manifests/busi_breast_us_lesions.json \
      --data-root ../shared/data/busi_breast_us_lesions [--n-images 32] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medtransfer.analysis.checkpoint_scores import target_batches
from medtransfer.analysis.compare import load_network, read_run_json
from medtransfer.analysis.transferability import robustness_score

CANDIDATES = (("output", True), ("output", False), ("pre_norm", True), ("pre_norm", False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pretrain_run")
    parser.add_argument("--target", required=True)
    parser.add_argument("--data-root")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--n-images", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--output", help="write the table as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run = Path(args.pretrain_run)
    record = read_run_json(run)
    entries = sorted(record["pretraining"]["checkpoints"], key=lambda e: e["epoch"])
    first = load_network(run, checkpoint=entries[0]["path"])
    size = list(record["config"]["patch_size"])
    batches = target_batches(args.target, size, args.split, args.n_images, seed=0, data_root=args.data_root,
                             divisor=2 ** (len(first.filters) - 1))
    networks = {0: load_network(run, checkpoint=entries[0]["path"]).model}
    torch.manual_seed(int(record["config"].get("seed", 0)))
    for module in networks[0].modules():  # epoch 0: the same architecture at a fresh initialisation
        if hasattr(module, "reset_parameters") and module is not networks[0]:
            module.reset_parameters()
    for entry in entries:
        networks[int(entry["epoch"])] = load_network(run, checkpoint=entry["path"]).model
    table = {}
    started = time.perf_counter()
    for representation, pool in CANDIDATES:
        name = f"{representation}/{'pooled' if pool else 'flat'}"
        scores = np.array([[robustness_score(model, batches, seed=seed, pool=pool, representation=representation)
                            ["score"] for seed in range(args.seeds)] for model in networks.values()])
        means, noise = scores.mean(axis=1), float(scores.std(axis=1, ddof=1).mean())
        spread = float(means.std(ddof=1))
        table[name] = {"epochs": list(networks), "mean_per_checkpoint": means.round(5).tolist(), "spread_sd": spread,
                       "noise_sd": noise, "ratio": spread / noise if noise > 0 else float("inf")}
    print(f"{len(networks)} checkpoints (epochs {list(networks)}) × {args.seeds} scoring seeds, "
          f"{batches and sum(len(b['image']) for b in batches)} target images ({args.split}), "
          f"{time.perf_counter() - started:.0f} s")
    print(f"{'representation':<18} {'spread (sd)':>12} {'noise (sd)':>11} {'ratio':>7}   scores by epoch")
    for name, row in table.items():
        print(f"{name:<18} {row['spread_sd']:12.5f} {row['noise_sd']:11.5f} {row['ratio']:7.1f}   "
              + " ".join(f"{v:.4f}" for v in row["mean_per_checkpoint"]))
    if args.output:
        Path(args.output).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
