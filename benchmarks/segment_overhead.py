"""Time and peak memory of `medtransfer segment` per scan, against a bare `sliding_window_inference` call on the
same network and the same (already preprocessed) volume.

    python benchmarks/segment_overhead.py [--processes 2] [--inner 3] [--filters 16 32 64 128] [--patch 32 48 32]

Volumes: an MSD Hippocampus NIfTI (35x51x35) and the 512x512x20 CT DICOM series (dicom_ct_totalseg_example).
The model is a bundle exported by `medtransfer export` from a run with the default 3D network (weights freshly
initialised: time does not depend on them), no resampling (the Hippocampus manifest has no target_spacing).
Each mode runs in fresh processes (so their peak RSS, from resource.getrusage, is their own), each timing the call
`--inner` times after a warm-up; bare and segment processes alternate so that load on the machine hits both alike.
Minimum and median over all timings are printed: on a shared machine the minimum is the better estimate. `segment` time covers reading the scan,
preprocessing, sliding windows, argmax, inversion to the scan's geometry, writing the NIfTI (and DICOM-SEG) and
summary.csv; the bare call covers the sliding windows only. Loading + verifying the bundle is timed separately.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DATA, REPO  # noqa: F401  (puts the repository on sys.path, quiets warnings)

VOLUMES = {
    "hippocampus_001 (NIfTI 35x51x35)": DATA / "msd_hippocampus" / "images" / "hippocampus_001.nii.gz",
    "CT series 512x512x20 (DICOM)": DATA / "dicom_ct_totalseg_example" / "dicom" / "ct",
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_bundle(folder: Path, filters: list[int], patch: list[int]) -> Path:
    """A finished run (fresh weights) exported the way a user exports theirs."""
    from medtransfer.atomic import save_torch, sha256_of
    from medtransfer.inference.export import export_bundle
    from medtransfer.networks import build_dynunet
    from medtransfer.training.run_directory import RunDirectory

    run_folder = folder / "run"
    run_folder.mkdir(parents=True)
    save_torch(run_folder / "model.pt", build_dynunet(3, filters=filters, init_seed=0).state_dict())
    params = {"bundle": "binary_seg_3d", "data_manifest": "msd_hippocampus", "data_root": str(DATA / "msd_hippocampus"),
              "fraction": 1.0, "seed": 0, "patch_size": patch, "filters": filters, "spatial_dims": 3,
              "strategy": "scratch", "source_checkpoint": None}
    run = RunDirectory(run_folder, params).prepare()
    run.write_record({"status": "finished", "metrics": {}, "model_sha256": sha256_of(run_folder / "model.pt")})
    return export_bundle(run_folder, folder / "bundle")


def child(mode: str, bundle: str, volume: str, inner: int) -> dict:
    """One measurement in this (fresh) process."""
    import torch
    from monai.inferers import sliding_window_inference

    from medtransfer.inference.bundle_loading import load_model
    from medtransfer.inference.segment import segment

    started = time.perf_counter()
    model = load_model(bundle)
    load_seconds = time.perf_counter() - started
    with torch.no_grad():  # one-time kernel set-up (every window batch size), paid by both modes before timing
        sliding_window_inference(torch.rand(1, 1, *[2 * s for s in model.roi_size]), model.roi_size,
                                 model.sw_batch_size, model.network, overlap=model.overlap)
    result = {"mode": mode, "load_seconds": load_seconds, "seconds": []}
    if mode == "bare":
        image = model.preprocessing({"image": volume})["image"].as_tensor()[None]
        result["rss_before_mib"] = peak_rss_mib()
        for _ in range(inner):
            started = time.perf_counter()
            with torch.no_grad():
                sliding_window_inference(image, model.roi_size, model.sw_batch_size, model.network,
                                         overlap=model.overlap, mode=model.mode)
            result["seconds"].append(time.perf_counter() - started)
    else:
        result["rss_before_mib"] = peak_rss_mib()
        with tempfile.TemporaryDirectory() as out:
            for _ in range(inner):
                started = time.perf_counter()
                rows = segment(model, volume, out, overwrite=True, progress=False)
                result["seconds"].append(time.perf_counter() - started)
                if not rows[0].ok:
                    raise RuntimeError(rows[0].error)
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2, help="fresh processes per mode and volume")
    parser.add_argument("--inner", type=int, default=3, help="timed calls per process")
    parser.add_argument("--filters", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--patch", type=int, nargs="+", default=[32, 48, 32])
    parser.add_argument("--child", nargs=3, metavar=("MODE", "BUNDLE", "VOLUME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.inner)))
        return

    import torch

    with tempfile.TemporaryDirectory() as folder:
        bundle = make_bundle(Path(folder), args.filters, args.patch)
        print(f"network DynUNet filters {args.filters}, sliding windows {args.patch}, sw_batch_size 4, overlap 0.25; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.processes} processes x "
              f"{args.inner} timed calls per mode; load average at start {os.getloadavg()[0]:.1f}")
        for label, volume in VOLUMES.items():
            runs: dict[str, list[dict]] = {"bare": [], "segment": []}
            for _ in range(args.processes):
                for mode in ("bare", "segment"):
                    output = subprocess.run(
                        [sys.executable, __file__, "--child", mode, str(bundle), str(volume), "--inner", str(args.inner)],
                        capture_output=True, text=True, check=True,
                    ).stdout
                    runs[mode].append(json.loads(output.strip().splitlines()[-1]))
            times = {m: [t for r in rows for t in r["seconds"]] for m, rows in runs.items()}
            low = {m: min(t) for m, t in times.items()}
            median = {m: statistics.median(t) for m, t in times.items()}
            peak = {m: max(r["peak_rss_mib"] for r in rows) for m, rows in runs.items()}
            base = {m: max(r["rss_before_mib"] for r in rows) for m, rows in runs.items()}
            load = statistics.median(r["load_seconds"] for r in runs["segment"])
            print(f"\n{label}")
            print(f"  medtransfer segment: min {low['segment']:.2f} s/scan, median {median['segment']:.2f} s; "
                  f"peak RSS {peak['segment']:.0f} MiB ({base['segment']:.0f} MiB after imports + bundle load)")
            print(f"  bare sliding_window_inference: min {low['bare']:.2f} s, median {median['bare']:.2f} s; "
                  f"peak RSS {peak['bare']:.0f} MiB ({base['bare']:.0f} MiB before the call)")
            print(f"  ratio segment / bare: {low['segment'] / low['bare']:.2f} (min), "
                  f"{median['segment'] / median['bare']:.2f} (median); bundle load + checks {load:.2f} s")
            print(f"  load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
