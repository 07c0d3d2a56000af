#!/usr/bin/env bash
# The 3D bundle on MSD Hippocampus on a CUDA GPU, AMP off (fp32) and on (precision auto: bf16 where the GPU
# supports it, else fp16 with a gradient scaler), for the same fixed budget. Prints per precision: s/step,
# achieved GFLOP/s (FlopCounterMode FLOPs of one step / s per step), peak GPU memory and the test Dice.
#   benchmarks/gpu_check.sh [EPOCHS] [ITERATIONS_PER_EPOCH]        (defaults 4 and 50)
# Needs a CUDA GPU and the data under $MEDTRANSFER_TEST_DATA (default ../shared/data); never part of the tests.
set -euo pipefail
cd "$(dirname "$0")"
EPOCHS="${1:-4}"
ITERATIONS="${2:-50}"
export PYTHONPATH="$(cd .. && pwd)${PYTHONPATH:+:$PYTHONPATH}"

python - "$EPOCHS" "$ITERATIONS" <<'EOF'
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from ignite.engine import Events

if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); nothing to measure")

from _common import DATA, workflow
from throughput import bare_steps

epochs, iterations = int(sys.argv[1]), int(sys.argv[2])
settings = {"data_manifest": "msd_hippocampus", "data_root": str(DATA / "msd_hippocampus"),
            "patch_size": [64, 64, 64], "batch_size": 2, "num_samples": 2, "filters": [16, 32, 64, 128],
            "max_epochs": epochs, "iterations_per_epoch": iterations, "num_workers": 4, "progress": False,
            "device": "$torch.device('cuda:0')"}
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
      f"{epochs} epochs x {iterations} iterations of 4 x 64^3", flush=True)
rows = []
for precision in ("fp32", "auto"):
    with tempfile.TemporaryDirectory() as output:
        flow = workflow(3, output_dir=output, precision=precision, **settings)
        choice = flow.parser.get_parsed_content("precision_choice")
        _, flops = bare_steps(flow, choice, steps=1, count_flops=True)
        stamps = []
        flow.trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: stamps.append(time.perf_counter()))
        torch.cuda.reset_peak_memory_stats()
        flow.run()
        steps = [b - a for a, b in zip(stamps, stamps[1:]) if b - a > 0]
        steps = steps[2:] or steps  # leave out cuDNN autotuning
        record = json.loads((Path(output) / "run.json").read_text())
        s_step = statistics.median(steps)
        rows.append({"precision": choice.name, "amp": choice.name != "fp32", "s_per_step": round(s_step, 4),
                     "GFLOP_per_s": round(flops / s_step / 1e9, 1),
                     "peak_gpu_memory_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                     "test_dice": round(record["metrics"]["mean_dice"], 4),
                     "wall_seconds": round(record["wall_time_seconds"], 1)})
        print(json.dumps(rows[-1]), flush=True)
print("| precision | AMP | s/step | GFLOP/s | peak GPU memory (GiB) | test Dice | wall (s) |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['precision']} | {'on' if r['amp'] else 'off'} | {r['s_per_step']} | {r['GFLOP_per_s']} | "
          f"{r['peak_gpu_memory_GiB']} | {r['test_dice']} | {r['wall_seconds']} |")
EOF
