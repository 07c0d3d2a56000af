"""Time and peak memory of `medtransfer segment` per scan, against a bare `sliding_window_inference` call on the
same network and the same (already preprocessed) volume.

    python benchmarks/segment_overhead.py [--repeats 3] [--filters 16 32 64 128] [--patch 32 48 32]

Volumes: an MSD Hippocampus NIfTI (35x51x35) and the 512x512x20 CT DICOM series (dicom_ct_totalseg_example).
The model is a bundle exported by `medtransfer export` from a run with the default 3D network (weights freshly
initialised: time does not depend on them), no resampling (the Hippocampus manifest has no target_spacing).

Time: one process per volume loads the bundle, warms up, then alternates bare call / segment call `--repeats`
times, so that load from other work on a shared machine hits both alike; wall and CPU (process) time are recorded
and min / median printed. `segment` covers reading the scan, preprocessing, sliding windows, argmax, inversion to
the scan's geometry, writing the NIfTI (and DICOM-SEG) and summary.csv; the bare call covers the sliding windows.
Memory: one fresh process per mode and volume makes a single call; its peak RSS (resource.getrusage) is printed
with the RSS it had before the call (imports, model, and for the bare call the preprocessed volume).
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
    params = {"bundle": "binary_seg_3d", "task": "segmentation", "data_manifest": "msd_hippocampus",
              "data_root": str(DATA / "msd_hippocampus"), "fraction": 1.0, "seed": 0, "patch_size": patch,
              "filters": filters, "spatial_dims": 3, "strategy": "scratch", "source_checkpoint": None}
    run = RunDirectory(run_folder, params).prepare()
    run.write_record({"status": "finished", "metrics": {}, "model_sha256": sha256_of(run_folder / "model.pt")})
    return export_bundle(run_folder, folder / "bundle")


class _Clock:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def _prepare(bundle: str):
    import torch
    from monai.inferers import sliding_window_inference

    from medtransfer.inference.bundle_loading import load_model

    with _Clock() as clock:
        model = load_model(bundle)
    with torch.no_grad():  # one-time kernel set-up (every window batch size), paid before any timing
        sliding_window_inference(torch.rand(1, 1, *[2 * s for s in model.roi_size]), model.roi_size,
                                 model.sw_batch_size, model.network, overlap=model.overlap)
    return model, clock.wall


def _bare(model, image) -> None:
    import torch
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        sliding_window_inference(image, model.roi_size, model.sw_batch_size, model.network,
                                 overlap=model.overlap, mode=model.mode)


def _segment(model, volume: str, out: str) -> None:
    from medtransfer.inference.segment import segment

    rows = segment(model, volume, out, overwrite=True, progress=False)
    if not rows[0].ok:
        raise RuntimeError(rows[0].error)


def time_child(bundle: str, volume: str, repeats: int) -> dict:
    """Alternating bare / segment calls in one process."""
    model, load_seconds = _prepare(bundle)
    image = model.preprocessing({"image": volume})["image"].as_tensor()[None]
    result = {"load_seconds": load_seconds, "bare": [], "segment": []}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(repeats):
            with _Clock() as clock:
                _bare(model, image)
            result["bare"].append((clock.wall, clock.cpu))
            with _Clock() as clock:
                _segment(model, volume, out)
            result["segment"].append((clock.wall, clock.cpu))
    return result


def memory_child(mode: str, bundle: str, volume: str) -> dict:
    """One call in a fresh process: its peak RSS."""
    model, _ = _prepare(bundle)
    if mode == "bare":
        image = model.preprocessing({"image": volume})["image"].as_tensor()[None]
        before = peak_rss_mib()
        _bare(model, image)
    else:
        before = peak_rss_mib()
        with tempfile.TemporaryDirectory() as out:
            _segment(model, volume, out)
    return {"before_mib": before, "peak_mib": peak_rss_mib()}


def _run_child(*arguments: str) -> dict:
    output = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="alternating bare / segment calls per volume")
    parser.add_argument("--filters", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--patch", type=int, nargs="+", default=[32, 48, 32])
    parser.add_argument("--time-child", nargs=2, metavar=("BUNDLE", "VOLUME"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", nargs=3, metavar=("MODE", "BUNDLE", "VOLUME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time_child:
        print(json.dumps(time_child(*args.time_child, args.repeats)))
        return
    if args.memory_child:
        print(json.dumps(memory_child(*args.memory_child)))
        return

    import torch

    with tempfile.TemporaryDirectory() as folder:
        bundle = str(make_bundle(Path(folder), args.filters, args.patch))
        print(f"network DynUNet filters {args.filters}, sliding windows {args.patch}, sw_batch_size 4, overlap 0.25; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
              f"{args.repeats} alternating calls per mode; load average at start {os.getloadavg()[0]:.1f}")
        for label, volume in VOLUMES.items():
            timing = _run_child("--time-child", bundle, str(volume), "--repeats", str(args.repeats))
            memory = {mode: _run_child("--memory-child", mode, bundle, str(volume)) for mode in ("bare", "segment")}
            wall = {m: [w for w, _ in timing[m]] for m in ("bare", "segment")}
            cpu = {m: [c for _, c in timing[m]] for m in ("bare", "segment")}
            print(f"\n{label}")
            for mode, name in (("segment", "medtransfer segment"), ("bare", "bare sliding_window_inference")):
                print(f"  {name}: wall min {min(wall[mode]):.2f} s, median {statistics.median(wall[mode]):.2f} s; "
                      f"CPU median {statistics.median(cpu[mode]):.2f} s; peak RSS {memory[mode]['peak_mib']:.0f} MiB "
                      f"({memory[mode]['before_mib']:.0f} MiB before the call)")
            print(f"  ratio segment / bare: wall {min(wall['segment']) / min(wall['bare']):.2f} (min), "
                  f"{statistics.median(wall['segment']) / statistics.median(wall['bare']):.2f} (median); "
                  f"CPU {statistics.median(cpu['segment']) / statistics.median(cpu['bare']):.2f} (median)")
            print(f"  bundle load + checks {timing['load_seconds']:.2f} s; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
