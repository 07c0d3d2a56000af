"""How much a naive image-level split of BUSI inflates test Dice: the near-duplicate leak, measured.

    python benchmarks/busi_split_leak.py --data-root ../shared/data [--seeds 0 1 2] [--max-epochs 40] [--keep DIR]

BUSI holds near-duplicate images (151 pairs in 100 groups by medtransfer.data.duplicates' rule, stored in the
shipped manifest). The shipped manifest splits by group; a naive seeded random split of images (the same 20 % test
and 10 % validation, the same seed, `near_duplicates=False`) puts about 50 pairs across training and test. Both are
trained the same way (scratch, all training images, the shipped cross-dataset study's settings and the same
epoch budget for both; `--max-epochs` sets that budget) and tested on their own test split. Printed:

* test Dice of the group split and of the naive split: the mean of per-seed means over the test images, with the
  t-interval over seeds (medtransfer.evaluation.statistics.cell_summary), and their difference (Welch's t-test
  over the seed means: the two arms share no test set, so nothing is paired);
* within the naive split, the test images that have a near-duplicate twin among its training (or validation)
  images against those that have none: per seed the difference of the two means, t-interval over seeds. This is
  the leak itself: a twin seen in training makes a test image easier.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from breast_us_manifests import busi_manifest  # noqa: E402  (the shipped manifest's own recipe)

from medtransfer.study.spec import load_study  # noqa: E402

STUDY = REPO / "studies" / "breast_us_cross_dataset.yaml"
TARGET = "busi_breast_us_lesions"


def study_file(folder: Path, name: str, manifest: str, data_root: Path, seeds: list[int], max_epochs: int,
               patience: int) -> Path:
    shipped = yaml.safe_load(STUDY.read_text())
    content = {
        "name": name,
        "spatial_dims": shipped["spatial_dims"],
        "data_manifest": manifest,
        "data_root": str(data_root),
        "settings": shipped["settings"],
        "finetune": {"strategies": ["scratch"], "fractions": [1.0], "seeds": seeds,
                     "settings": {**shipped["finetune"]["settings"], "max_epochs": max_epochs,
                                  "early_stop_patience": patience}},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def train(spec, study_dir: Path, workers: int) -> None:
    """Every fine-tune of `spec` as its own `monai.bundle run` process (the study runner's command), `workers` at
    a time; finished runs are kept. Not through `medtransfer study run`: its leakage guard refuses the naive split
    (near-duplicates across training and test), which is what this benchmark measures."""
    from concurrent.futures import ThreadPoolExecutor

    from medtransfer.study.spec import bundle_command

    threads = max(1, (os.cpu_count() or 1) // workers)  # as the study runner's local executor

    def one(run):
        folder = study_dir / "runs" / run.run_id
        record = folder / "run.json"
        if record.is_file() and json.loads(record.read_text()).get("status") == "finished":
            return
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "log.txt", "ab") as log:
            subprocess.run(bundle_command(run, spec.bundle_root, folder), check=True, stdout=log,
                           stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        print(f"finished {run.run_id}", flush=True)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, spec.expand()))


def per_case(study_dir: Path) -> dict[tuple[str, int], float]:
    """{(case, seed): test Dice} of every finished fine-tune in a study folder."""
    out = {}
    for record_path in sorted((study_dir / "runs").glob("ft-*/run.json")):
        record = json.loads(record_path.read_text())
        seed = int(record["config"]["seed"])
        for row in record["per_case"]:
            out[(row["case"], seed)] = float(row["dice"])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-epochs", type=int, default=40, help="epoch budget of both arms (10 iterations each)")
    parser.add_argument("--patience", type=int, default=10, help="early-stopping patience (validations)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", help="folder for the manifests, study files and study folders (default: temporary)")
    args = parser.parse_args(argv)
    from scipy import stats

    from medtransfer.evaluation.statistics import cell_summary, mean_ci, seed_means

    data_root = Path(args.data_root).resolve()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="busi_split_leak_")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    shipped = json.loads((REPO / "data_manifests" / f"{TARGET}.json").read_text())
    naive = busi_manifest(data_root, near_duplicates=False, name=f"{TARGET}_naive_split")
    naive_path = folder / f"{naive['name']}.json"
    naive_path.write_text(json.dumps(naive))

    twins: dict[str, set[str]] = {}
    for group in shipped["near_duplicate_groups"]:
        for member in group:
            twins[member] = set(group) - {member}
    seen = {c["id"] for split in ("training", "validation") for c in naive[split]}
    naive_test = [c["id"] for c in naive["test"]]
    leaked = {case for case in naive_test if twins.get(case, set()) & seen}
    across = sum(1 for group in shipped["near_duplicate_groups"] for a in group for b in group
                 if a < b and ((a in seen) != (b in seen)) and (a in naive_test or b in naive_test))
    print(f"naive split: {len(naive_test)} test images, {len(leaked)} of them with a near-duplicate twin in "
          f"training/validation; {across} near-duplicate pairs cross test and training/validation")

    results = {}
    for name, manifest, root in (("group_split", TARGET, data_root / TARGET),
                                 ("naive_split", str(naive_path), data_root / TARGET)):
        path = study_file(folder, f"busi_leak_{name}", manifest, root, args.seeds, args.max_epochs, args.patience)
        study_dir = folder / name
        train(load_study(path), study_dir, args.workers)
        results[name] = per_case(study_dir)

    summary = {name: cell_summary(observations) for name, observations in results.items()}
    for name, cell in summary.items():
        print(f"{name}: test Dice {cell['mean']:.3f} [{cell['ci_low']:.3f}, {cell['ci_high']:.3f}] over "
              f"{cell['n_seeds']} seeds × {cell['n_units']} test images; seed means "
              f"{', '.join(f'{v:.3f}' for v in cell['seed_means'].values())}")
    group_means = list(summary["group_split"]["seed_means"].values())
    naive_means = list(summary["naive_split"]["seed_means"].values())
    welch = stats.ttest_ind(naive_means, group_means, equal_var=False)
    interval = welch.confidence_interval(0.95)
    print(f"naive − group: {sum(naive_means) / len(naive_means) - sum(group_means) / len(group_means):+.3f} "
          f"[{interval.low:+.3f}, {interval.high:+.3f}], Welch p = {welch.pvalue:.3g}")

    naive_obs = results["naive_split"]
    with_twin = seed_means({k: v for k, v in naive_obs.items() if k[0] in leaked})
    without = seed_means({k: v for k, v in naive_obs.items() if k[0] not in leaked})
    differences = [with_twin[seed] - without[seed] for seed in with_twin if seed in without]
    leak = mean_ci(differences)
    print(f"naive split, test images with a twin in training − without: {leak['mean']:+.3f} "
          f"[{leak['ci_low']:+.3f}, {leak['ci_high']:+.3f}] over {leak['n']} seeds "
          f"({len(leaked)} vs {len(naive_test) - len(leaked)} images); with twin "
          f"{sum(with_twin.values()) / len(with_twin):.3f}, without {sum(without.values()) / len(without):.3f}")
    print(json.dumps({"folder": str(folder), "max_epochs": args.max_epochs, "seeds": args.seeds,
                      "naive_test_with_twin": len(leaked), "pairs_across": across,
                      "group_split": {k: v for k, v in summary["group_split"].items() if k != "seed_means"},
                      "naive_split": {k: v for k, v in summary["naive_split"].items() if k != "seed_means"},
                      "twin_minus_no_twin": leak}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
