"""Where a planned training iteration's time goes: the augmentation chain transform by transform, the network's
step alone, and the bundle's whole iteration at each `num_workers`, in one process (issue 25).

    python benchmarks/input_pipeline.py --plan studies/plans/busi_breast_us_lesions.json \\
        --data-manifest busi_breast_us_lesions --data-root ../shared/data/busi_breast_us_lesions \\
        [--steps 24] [--workers 0 1] [--images 24] [--threads 2] [--json out.json]

The planner models an iteration as the network's step (`rules.STEP_SECONDS`, or `plan --measure`) times
`rules.STEP_OVERHEAD`. This script splits a planned iteration into its parts, so that each factor is measured
on its own (2026-12-07, BUSI plan, quiet cores: augmentation 0.06 s, network 0.52 s, bundle 1.08x the step):

- per transform that runs at every iteration (the bundle's `train#preprocessing` from its first random transform
  on; the part before it is cached once): milliseconds per source image, as the chain uses it (each transform at
  its own probability, so a p 0.1 transform costs a tenth of its call), mean over `--images` training images x 3
  passes; and those transforms' seconds per training step (x batch_size images);
- the network's step alone: forward + backward + Adam on one fixed batch of the plan's shape, at the run's
  precision (no data loading);
- the bundle's trainer (SupervisedTrainer + medtransfer handlers, validation off): median s/step and the share
  spent waiting for the data loader, for every `--workers` value, measured twice in alternating order
  (0, 1, 0, 1) so that load from other users of the cores hits each alike.

Prints a table and the ratio bundle/network per `num_workers` (the number `STEP_OVERHEAD` models).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from monai.losses import DiceCELoss
from monai.transforms import Randomizable
from monai.utils import set_determinism

from _common import workflow
from medtransfer.planning.plan import load_plan
from medtransfer.training.precision import resolve_precision
from throughput import bundle_steps


def chain_costs(flow, images: int, passes: int = 3) -> tuple[list[dict], float]:
    """Milliseconds per source image of each per-iteration transform (as used: at its probability).

    The chain is the bundle's own `train#preprocessing`, split where its CacheDataset splits it: everything before
    the first random transform is cached once, the rest runs at every iteration and is timed here."""
    chain = list(flow.parser.get_parsed_content("train#preprocessing").transforms)
    first_random = next(i for i, t in enumerate(chain) if isinstance(t, Randomizable))
    cached, per_iteration = chain[:first_random], chain[first_random:]
    manifest = flow.parser.get_parsed_content("manifest")
    loaded = []
    for case in manifest.datalist("training", 1.0)[:images]:
        item = dict(case)
        for transform in cached:
            item = transform(item)
        loaded.append(item)
    for index, transform in enumerate(per_iteration):
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=index)
    per_transform = [[] for _ in per_iteration]
    for _ in range(passes):
        for item in loaded:
            data = copy.deepcopy(item)
            for index, transform in enumerate(per_iteration):
                start = time.perf_counter()
                data = [transform(d) for d in data] if isinstance(data, list) else transform(data)
                per_transform[index].append(time.perf_counter() - start)
    rows = [{"transform": type(transform).__name__, "p": getattr(transform, "prob", 1.0),
             "ms_per_image": round(1000 * statistics.mean(times), 2)}
            for transform, times in zip(per_iteration, per_transform)]
    return rows, sum(statistics.mean(t) for t in per_transform)


def network_step(flow, precision, steps: int) -> tuple[float, tuple[int, ...]]:
    """Median seconds of forward + backward + Adam on one fixed batch (the first the bundle's loader gives), and
    that batch's shape."""
    network = copy.deepcopy(flow.parser.get_parsed_content("network_def"))  # the run's own architecture
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=flow.parser["learning_rate"])
    batch = next(iter(flow.parser.get_parsed_content("train#dataloader")))
    image, label = batch["image"].as_tensor(), batch["label"].as_tensor()
    network.train()
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            pred = network(image)
        loss = loss_function(pred.float(), label)
        loss.backward()
        optimizer.step()
        loss.item()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:]), tuple(image.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", required=True, type=Path)
    parser.add_argument("--data-manifest", required=True)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--steps", type=int, default=24, help="timed trainer steps per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--images", type=int, default=24, help="training images for the per-transform costs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = load_plan(args.plan)
    keys = dict(plan["bundle_keys"])
    dims = int(plan["dimensions"])
    precision = resolve_precision("auto", "cpu", announce=False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {precision.name}; plan {args.plan}",
          flush=True)
    settings = {"plan": str(args.plan), "data_manifest": args.data_manifest, "data_root": args.data_root,
                "max_epochs": 1, "iterations_per_epoch": args.steps + 2, "val_interval": 1000, "progress": False}
    results: dict = {"plan": str(args.plan), "threads": torch.get_num_threads(), "precision": precision.name,
                     "bundle_s_per_step": {}, "data_wait_share": {}}
    order = list(args.workers) * 2
    for round_index, num_workers in enumerate(order):
        set_determinism(seed=0)
        with tempfile.TemporaryDirectory() as output:
            flow = workflow(dims, output_dir=output, num_workers=num_workers, **settings)
            if round_index == 0:
                rows, per_image = chain_costs(flow, args.images)
                results["transforms"] = rows
                results["augmentation_s_per_step"] = round(per_image * keys["batch_size"], 4)
                step, shape = network_step(flow, precision, args.steps)
                results["network_s_per_step"] = round(step, 4)
                results["batch_shape"] = list(shape)
                print(f"network step alone {step:.3f} s on a {tuple(shape)} batch; augmentation "
                      f"{per_image * 1000:.1f} ms per image = {per_image * keys['batch_size']:.3f} s per step",
                      flush=True)
            times, waits = bundle_steps(flow, args.steps)
        results["bundle_s_per_step"].setdefault(str(num_workers), []).append(round(statistics.median(times), 4))
        results["data_wait_share"].setdefault(str(num_workers), []).append(round(sum(waits) / sum(times), 3))
        print(f"num_workers {num_workers}: {statistics.median(times):.3f} s/step, data wait "
              f"{sum(waits) / sum(times):.1%}", flush=True)

    print("\n| transform | p | ms per image (as used) |\n|---|---|---|")
    for row in results["transforms"]:
        print(f"| {row['transform']} | {row['p']} | {row['ms_per_image']} |")
    print(f"\nnetwork step alone: {results['network_s_per_step']} s; augmentation (in the main process): "
          f"{results['augmentation_s_per_step']} s per step")
    print("| num_workers | bundle s/step (two rounds) | data wait | bundle / network step |\n|---|---|---|---|")
    results["overhead"] = {}
    for num_workers, values in results["bundle_s_per_step"].items():
        ratio = statistics.median(values) / results["network_s_per_step"]
        results["overhead"][num_workers] = round(ratio, 3)
        print(f"| {num_workers} | {values} | {results['data_wait_share'][num_workers]} | {ratio:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
