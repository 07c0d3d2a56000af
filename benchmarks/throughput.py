"""Training throughput of the 2D and 3D bundles on real data, against this machine's measured peak.

    python benchmarks/throughput.py [--dims 2 3] [--precisions fp32 auto] [--steps 12] [--workers 0 2]

Everything is measured in one process, so that load from other users of the cores hits every row alike
(the ratios are the robust numbers; absolute s/step depend on what else runs). Per bundle and precision:

- s/step: median time between consecutive trainer iterations (data + forward + backward + Adam + handlers),
  first steps of an epoch left out (worker start-up);
- GFLOP/s: FLOPs of one step counted by `torch.utils.flop_counter.FlopCounterMode`, divided by s/step, and its
  ratio to the peak of a 64->64 3x3 convolution (forward + backward) measured here for the same precision and
  the default (contiguous) layout;
- bare: the same network, loss, optimizer, data loader and precision in a plain PyTorch loop; bundle/bare is
  the framework's efficiency (>= 0.95 wanted);
- data wait: the share of a step spent in the data loader (ignite GET_BATCH events), per num_workers;
- channels-last: the bare loop again with the network and batches in channels_last(_3d);
- segment: volumes/s of `medtransfer segment` (read, preprocess, sliding windows, write) on test scans.
Data: HC18 (2D, 16 x 128^2 patches per step) and MSD Hippocampus (3D, 4 x 64^3), the issue's settings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from ignite.engine import Events
from monai.losses import DiceCELoss
from torch.utils.flop_counter import FlopCounterMode

from _common import DATA, workflow
from medtransfer.handlers.run_record import cache_megabytes
from medtransfer.networks import build_dynunet
from medtransfer.training.precision import resolve_precision

CELLS = {
    2: {"data_manifest": "hc18_fetal_head", "data_root": "hc18_fetal_head", "patch_size": [128, 128],
        "batch_size": 8, "num_samples": 2, "filters": [16, 32, 64, 128, 256]},
    3: {"data_manifest": "msd_hippocampus", "data_root": "msd_hippocampus", "patch_size": [64, 64, 64],
        "batch_size": 2, "num_samples": 2, "filters": [16, 32, 64, 128]},
}


def _memory_format(dims: int, channels_last: bool) -> torch.memory_format:
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last if dims == 2 else torch.channels_last_3d


def _median_time(fn, repeats: int = 4) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def conv_peak(dims: int, precision, channels_last: bool) -> float:
    """GFLOP/s of a 64->64 3x3(x3) convolution, forward + backward, at this precision and layout."""
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(64, 64, 3, padding=1)
    shape = (8, 64, 128, 128) if dims == 2 else (2, 64, 32, 32, 32)
    fmt = _memory_format(dims, channels_last)
    conv = conv.to(memory_format=fmt)
    x = torch.randn(shape).contiguous(memory_format=fmt).requires_grad_()

    def step():
        with precision.autocast():
            out = conv(x)
        out.float().sum().backward()

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / _median_time(step) / 1e9


def bare_steps(flow, precision, steps: int, channels_last: bool = False, count_flops: bool = False):
    """Per-step seconds of a plain PyTorch loop over the bundle's own data loader (and FLOPs of one step)."""
    dims = flow.parser["spatial_dims"]
    device = flow.parser.get_parsed_content("device")
    fmt = _memory_format(dims, channels_last)
    network = build_dynunet(dims, filters=flow.parser["filters"], init_seed=0).to(device, memory_format=fmt)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=flow.parser["learning_rate"])
    loader = flow.parser.get_parsed_content("train#dataloader")
    network.train()

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        image = batch["image"].as_tensor().to(device).contiguous(memory_format=fmt)
        with precision.autocast():
            pred = network(image)
        loss = loss_function(pred.float(), batch["label"].as_tensor().to(device))
        loss.backward()
        optimizer.step()
        loss.item()  # wait for the device, as the bundle's loss logging does

    flops, times = None, []
    while len(times) < steps + 2:
        last = time.perf_counter()
        for batch in loader:
            if count_flops and flops is None:
                with FlopCounterMode(display=False) as counter:
                    step(batch)
                flops = counter.get_total_flops()
            else:
                step(batch)
            now = time.perf_counter()
            times.append(now - last)
            last = now
            if len(times) == steps + 2:
                break
    return times[2:], flops


def bundle_steps(flow, steps: int) -> tuple[list[float], list[float]]:
    """Per-step seconds of the bundle's trainer (SupervisedTrainer + handlers) and the data-loader wait of each."""
    trainer = flow.trainer
    marks = {"completed": [], "wait": []}
    start = {}
    trainer.add_event_handler(Events.GET_BATCH_STARTED, lambda e: start.__setitem__("batch", time.perf_counter()))
    trainer.add_event_handler(
        Events.GET_BATCH_COMPLETED, lambda e: marks["wait"].append(time.perf_counter() - start["batch"])
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: marks["completed"].append(time.perf_counter()))
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: marks["completed"].append(time.perf_counter()))
    for handler in flow.parser.get_parsed_content("train#handlers"):  # no test evaluation at the end
        if type(handler).__name__ == "RunRecord":
            trainer.remove_event_handler(handler.finish, Events.COMPLETED)
    trainer.run()
    stamps = marks["completed"]
    step_times = [b - a for a, b in zip(stamps, stamps[1:])]
    return step_times[2:], marks["wait"][2:]


def segment_rate(flow, precision_name: str, n_scans: int) -> float:
    """Volumes per second of `medtransfer segment` with the trained network on test scans (I/O included)."""
    from medtransfer.inference.bundle_loading import SegmentationModel, _eval_preprocessing
    from medtransfer.inference.segment import segment

    dims = flow.parser["spatial_dims"]
    manifest = flow.parser.get_parsed_content("manifest")
    scans = [case["image"] for case in manifest.datalist("test")[:n_scans]]
    model = SegmentationModel(
        network=flow.parser.get_parsed_content("network").eval(), spatial_dims=dims,
        preprocessing=_eval_preprocessing(dims, manifest.target_spacing), roi_size=list(flow.parser["patch_size"]),
        source="benchmark",
    )
    with tempfile.TemporaryDirectory() as output:
        segment(model, scans[:1], Path(output) / "warm", progress=False, precision=precision_name)
        start = time.perf_counter()
        segment(model, scans, Path(output) / "masks", progress=False, precision=precision_name)
        return len(scans) / (time.perf_counter() - start)


def measure(dims: int, precision_name: str, steps: int, workers: list[int], segment_scans: int) -> dict:
    cell = CELLS[dims]
    settings = {**cell, "data_root": str(DATA / cell["data_root"]), "precision": precision_name, "max_epochs": 1,
                "iterations_per_epoch": steps + 2, "val_interval": 1000, "progress": False}
    precision = resolve_precision(precision_name, "cpu", announce=False)
    row = {"bundle": f"binary_seg_{dims}d", "data": cell["data_manifest"], "precision": precision.name,
           "patches": f"{cell['batch_size'] * cell['num_samples']} x {'x'.join(map(str, cell['patch_size']))}"}
    peak = conv_peak(dims, precision, channels_last=False)
    peak_cl = conv_peak(dims, precision, channels_last=True)
    waits = {}
    for num_workers in workers:
        with tempfile.TemporaryDirectory() as output:
            flow = workflow(dims, output_dir=output, num_workers=num_workers, **settings)
            if num_workers == workers[0]:
                bare, flops = bare_steps(flow, precision, steps, count_flops=True)
                step_times, wait = bundle_steps(flow, steps)
                bare_again, _ = bare_steps(flow, precision, steps)  # before and after: load hits both alike
                channels_last, _ = bare_steps(flow, precision, steps, channels_last=True)
                row["cache_MB"] = round(cache_megabytes(flow.parser.get_parsed_content("train#dataset"))
                                        + cache_megabytes(flow.parser.get_parsed_content("validate#dataset")), 1)
                if segment_scans:
                    row["segment_volumes_per_s"] = round(segment_rate(flow, precision_name, segment_scans), 2)
            else:
                step_times, wait = bundle_steps(flow, steps)
            waits[num_workers] = (step_times, wait)
    step_times, _ = waits[workers[0]]
    s_step = statistics.median(step_times)
    s_bare = statistics.median(bare + bare_again)
    row.update({
        "s_per_step": round(s_step, 3),
        "GFLOP_per_step": round(flops / 1e9, 1),
        "GFLOP_per_s": round(flops / s_step / 1e9, 1),
        "conv_peak_GFLOP_per_s": round(peak, 1),
        "ratio_to_peak": round(flops / s_step / 1e9 / peak, 3),
        "bare_s_per_step": round(s_bare, 3),
        "bundle_over_bare_speed": round(s_bare / s_step, 3),
        "channels_last_bare_s_per_step": round(statistics.median(channels_last), 3),
        "channels_last_speedup": round(s_bare / statistics.median(channels_last), 3),
        "conv_peak_channels_last_GFLOP_per_s": round(peak_cl, 1),
    })
    for num_workers, (times, wait) in waits.items():
        row[f"data_wait_share_workers_{num_workers}"] = round(sum(wait) / sum(times), 3)
        row[f"s_per_step_workers_{num_workers}"] = round(statistics.median(times), 3)
    return row


def table(rows: list[dict]) -> str:
    columns = ["bundle", "precision", "patches", "s_per_step", "GFLOP_per_s", "conv_peak_GFLOP_per_s", "ratio_to_peak",
               "bare_s_per_step", "bundle_over_bare_speed", "channels_last_speedup"]
    columns += sorted({k for row in rows for k in row if k.startswith("data_wait")})
    columns += ["cache_MB", "segment_volumes_per_s"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3], choices=(2, 3))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement (after 2 warm-up steps)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="num_workers values for data wait")
    parser.add_argument("--segment-scans", type=int, default=4, help="test scans for segment volumes/s (0: skip)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 is steadier on shared cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{resolve_precision('auto', 'cpu', announce=False).describe()}", flush=True)
    rows = []
    for dims in args.dims:
        for precision_name in args.precisions:
            rows.append(measure(dims, precision_name, args.steps, args.workers, args.segment_scans))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
