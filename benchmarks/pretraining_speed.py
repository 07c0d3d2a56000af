"""Pretraining speed (samples/s) of every objective with the 2D and 3D bundle defaults on this machine.

    python benchmarks/pretraining_speed.py [--iterations 10] [--dims 2 3]
A sample is one network input patch (ConRec counts both views). Synthetic default data; the first iteration
(warm-up) is not timed.
"""

import argparse
import json
import tempfile
import time

from ignite.engine import Events

from _common import workflow

from medtransfer.pretraining import OBJECTIVES


def measure(dims: int, objective: str, iterations: int) -> dict:
    with tempfile.TemporaryDirectory() as output:
        flow = workflow(dims, configs=("train.yaml", "pretrain.yaml", f"pretrain/{objective}.yaml"), output_dir=output,
                        max_epochs=1, iterations_per_epoch=iterations + 1, checkpoint_epochs=[1])
        stamps = []
        flow.trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: stamps.append(time.perf_counter()))
        flow.run()
        batch = flow.parser["batch_size"] * (2 if objective == "contrastive_reconstruction" else flow.parser["num_samples"])
        seconds = stamps[-1] - stamps[0]
        return {"dims": dims, "objective": objective, "samples_per_s": round(batch * iterations / seconds, 2),
                "seconds_per_iteration": round(seconds / iterations, 3), "samples_per_iteration": batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    args = parser.parse_args()
    rows = [measure(dims, objective, args.iterations) for dims in args.dims for objective in OBJECTIVES]
    for row in rows:
        print(f"{row['dims']}D {row['objective']:<28} {row['samples_per_s']:>8} samples/s "
              f"({row['seconds_per_iteration']} s/it, {row['samples_per_iteration']} samples/it)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
