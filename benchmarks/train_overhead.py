"""Training throughput of the bundle (MONAI SupervisedTrainer + medtransfer handlers) against a bare PyTorch
loop with the same network, loss, optimizer, batches and cached data, in the same process; and the data
pipeline's time per epoch with and without the cache.

    python benchmarks/train_overhead.py [--dims 2] [--iterations 40] [--repeats 3]
Runs alternate (bare, bundle, bare, bundle, ...) so that load on the machine hits both alike; the ratio of
medians is printed (>= 0.9 means the framework costs less than 10 %).
"""

import argparse
import json
import statistics
import tempfile
import time

import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.losses import DiceCELoss

from _common import Stopwatch, workflow
from medtransfer.networks import build_dynunet


def bare_loop(flow, iterations: int) -> float:
    """Seconds for `iterations` steps of a plain PyTorch loop over the bundle's own data loader."""
    network = build_dynunet(flow.parser["spatial_dims"], filters=flow.parser["filters"])  # fresh, same architecture
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=flow.parser["learning_rate"])
    loader = flow.parser.get_parsed_content("train#dataloader")
    network.train()
    done = 0
    start = time.perf_counter()
    while done < iterations:
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(network(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
            done += 1
            if done == iterations:
                break
    return time.perf_counter() - start


def bundle_epoch(flow) -> float:
    """Seconds of one trainer epoch (validation excluded: it runs only after the timed epoch)."""
    trainer = flow.trainer
    times = {}
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: times.__setitem__("start", time.perf_counter()))
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=trainer.state.epoch_length),
                              lambda e: times.__setitem__("end", time.perf_counter()))
    flow.run()
    return times["end"] - times["start"]


def pipeline_epoch(flow, cached: bool) -> float:
    """Seconds to draw one epoch of training batches (no network): CacheDataset vs plain Dataset."""
    dataset = flow.parser.get_parsed_content("train#dataset")
    if not cached:
        dataset = Dataset(dataset.data, transform=dataset.transform)
    loader = DataLoader(dataset, batch_size=flow.parser["batch_size"], shuffle=True, num_workers=0)
    with Stopwatch() as watch:
        for _ in loader:
            pass
    return watch.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    bare, framework = [], []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as output:
            flow = workflow(args.dims, output_dir=output, max_epochs=1, iterations_per_epoch=args.iterations,
                            val_interval=1000, seed=repeat)
            bare.append(bare_loop(flow, args.iterations))
            framework.append(bundle_epoch(flow))
            if repeat == 0:
                cached = [pipeline_epoch(flow, cached=True) for _ in range(2)]
                uncached = [pipeline_epoch(flow, cached=False) for _ in range(2)]
                samples_per_step = flow.parser["batch_size"] * flow.parser["num_samples"]
                n_cases = len(flow.parser.get_parsed_content("train#dataset"))
    bare_rate = samples_per_step * args.iterations / statistics.median(bare)
    bundle_rate = samples_per_step * args.iterations / statistics.median(framework)
    print(json.dumps({
        "benchmark": f"train_overhead_{args.dims}d",
        "patches_per_step": samples_per_step,
        "iterations": args.iterations,
        "bare_pytorch_samples_per_s": round(bare_rate, 2),
        "bundle_samples_per_s": round(bundle_rate, 2),
        "ratio_bundle_over_bare": round(bundle_rate / bare_rate, 3),
        "bare_seconds": [round(s, 2) for s in bare],
        "bundle_seconds": [round(s, 2) for s in framework],
        "pipeline_epoch_seconds_cached": round(min(cached), 3),
        "pipeline_epoch_seconds_uncached": round(min(uncached), 3),
        "pipeline_cases_per_epoch": n_cases,
    }, indent=2))


if __name__ == "__main__":
    main()
