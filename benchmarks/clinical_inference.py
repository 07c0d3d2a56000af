"""Dice / HD95 and seconds per scan of one seed, TTA, an ensemble of seeds, each with and without post-processing.

    python benchmarks/clinical_inference.py RUN_SEED0 RUN_SEED1 RUN_SEED2 [--split test] [--json out.json]

The runs are finished training runs of one study cell (same architecture, different seeds). Every case of the split
is loaded once in the network's grid (the evaluated grid of run.json's metrics); each model predicts it with and
without the flips of ``segment --tta``, and the configurations are combined from those probabilities with the
functions ``segment`` uses. Seconds per scan count only the forward passes (and softmax) a configuration needs.
Post-processing: the choice each run learned on its validation split (run.json), and "keep largest" forced.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from _common import DATA  # noqa: F401  (sets sys.path and quiets warnings)

import numpy as np
import torch


def _mean(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _best_weights_model(run: Path, manifest):
    from medtransfer.data import eval_transforms
    from medtransfer.inference.bundle_loading import SegmentationModel, _run_network
    from medtransfer.training.weights import load_weights

    config = json.loads((run / "run.json").read_text())["config"]
    network = _run_network(config, run)
    load_weights(network, run / "model.pt")
    dims = int(config["spatial_dims"])
    return SegmentationModel(
        network=network.eval(), spatial_dims=dims, roi_size=list(config["patch_size"]), source=f"run {run}",
        preprocessing=eval_transforms(dims, target_spacing=manifest.target_spacing, with_label=False),
    )


def _learn(model, manifest, chain):
    from medtransfer.inference.postprocess import choose_postprocessing
    from medtransfer.inference.segment import probabilities

    predictions, labels, spacings = [], [], []
    for case in manifest.datalist("validation"):
        data = chain(case)
        probs = probabilities([model], data["image"][None].as_tensor())[0]
        predictions.append((probs[1] > probs[0]).numpy().astype(np.uint8))
        labels.append((data["label"][0] > 0.5).numpy().astype(np.uint8))
        spacings.append([float(s) for s in data["image"].pixdim])
    choice = choose_postprocessing(predictions, labels, spacings)
    print(f"{model.source}: learned on {len(predictions)} validation cases: {choice}", flush=True)
    return choice


def main() -> None:
    from medtransfer.data import eval_transforms
    from medtransfer.data.open import open_manifest
    from medtransfer.evaluation.metrics import case_metrics
    from medtransfer.inference.bundle_loading import load_model
    from medtransfer.inference.postprocess import KEEP_LARGEST, apply_postprocessing
    from medtransfer.inference.segment import check_ensemble, clinical, flip_axes, probabilities

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="first N cases only")
    parser.add_argument("--json")
    parser.add_argument("--best-weights", action="store_true",
                        help="use each run's current model.pt (best validation weights so far) even if the run has "
                             "not finished; the post-processing is then learned here on the validation split")
    args = parser.parse_args()
    torch.set_num_threads(1)

    record = json.loads((Path(args.runs[0]) / "run.json").read_text())
    config = record["config"]
    manifest = open_manifest(config["data_manifest"], config["data_root"], dimensions=int(config["spatial_dims"]))
    chain = eval_transforms(int(config["spatial_dims"]), manifest.label_map, manifest.target_spacing, with_label=True)
    if args.best_weights:
        models = [_best_weights_model(Path(run), manifest) for run in args.runs]
    else:
        models = [load_model(run) for run in args.runs]
    check_ensemble(models)
    cases = manifest.datalist(args.split)[: args.limit]
    learned = [clinical(m).get("postprocessing") for m in models]
    if args.best_weights:  # unfinished runs: learn it here, with the function the training handler uses
        learned = [_learn(model, manifest, chain) for model in models]
    print("learned post-processing per run:", [(p or {}).get("method", "none") for p in learned])

    configurations = {"seed0": ([0], False), "seed0+tta": ([0], True),
                      f"ensemble{len(models)}": (list(range(len(models))), False),
                      f"ensemble{len(models)}+tta": (list(range(len(models))), True)}
    configurations.update({f"seed{i}": ([i], False) for i in range(1, len(models))})
    rows = {name: {"dice": [], "hd95": [], "seconds": [], "pp_dice": [], "pp_hd95": [], "largest_dice": [],
                   "largest_hd95": []} for name in configurations}
    for number, case in enumerate(cases):
        data = chain(case)
        image, label = data["image"][None], (data["label"][0] > 0.5).numpy()
        spacing = [float(s) for s in data["image"].pixdim]
        cache = {}  # (model, tta) -> (probabilities, seconds)
        for index, model in enumerate(models):
            for tta in (False, True):
                started = time.perf_counter()
                probs = probabilities([model], image.as_tensor(), tta=tta)[0]
                cache[(index, tta)] = (probs, time.perf_counter() - started)
        for name, (members, tta) in configurations.items():
            probs = sum(cache[(m, tta)][0] for m in members) / len(members)
            seconds = sum(cache[(m, tta)][1] for m in members)
            mask = (probs[1] > probs[0]).numpy().astype(np.uint8)
            spec = learned[members[0]]
            for prefix, current in (("", mask), ("pp_", apply_postprocessing(mask, spec, spacing)),
                                    ("largest_", apply_postprocessing(mask, {"method": KEEP_LARGEST}, spacing))):
                metrics = case_metrics(current, label, spacing=spacing)
                rows[name][f"{prefix}dice"].append(metrics["dice"])
                rows[name][f"{prefix}hd95"].append(metrics["hd95"])
            rows[name]["seconds"].append(seconds)
        print(f"case {number + 1}/{len(cases)} done", flush=True)

    summary = {name: {key: _mean(values) for key, values in row.items()} for name, row in rows.items()}
    summary_nan = {name: int(sum(math.isnan(v) for v in row["hd95"])) for name, row in rows.items()}
    print(f"\n{len(cases)} {args.split} cases of {config['data_manifest']}, spacing of the evaluated grid {spacing}")
    print(f"{'configuration':<16} {'Dice':>7} {'HD95':>8} {'Dice+PP':>8} {'HD95+PP':>8} {'Dice+LCC':>9} "
          f"{'HD95+LCC':>9} {'s/scan':>8}")
    for name, row in summary.items():
        print(f"{name:<16} {row['dice']:7.4f} {row['hd95']:8.2f} {row['pp_dice']:8.4f} {row['pp_hd95']:8.2f} "
              f"{row['largest_dice']:9.4f} {row['largest_hd95']:9.2f} {row['seconds']:8.3f}")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump({"summary": summary, "hd95_nan_cases": summary_nan, "per_case": rows,
                       "learned": learned, "runs": args.runs, "split": args.split}, stream, indent=1)


if __name__ == "__main__":
    main()
