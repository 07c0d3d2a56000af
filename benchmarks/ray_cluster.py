"""The Ray executor on a multi-node `ray.cluster_utils.Cluster` (separate raylets on this machine), measured.

    python benchmarks/ray_cluster.py placement   # a real 5-run study: local pool (2 workers) vs 2 Ray nodes
    python benchmarks/ray_cluster.py overhead    # 100 trivial runs (fake bundle): seconds per run, local vs Ray
    python benchmarks/ray_cluster.py node-loss   # a real 5-run study; the node training the pretraining is removed

placement: wall time of each engine, runs per node, and whether the run ids and test Dice agree (same seeds, same
thread count: the local pool gives each run cores/workers threads, Ray gives it its num_cpus).
overhead: wall time / 100 for each engine at the same concurrency (2), both starting a fresh interpreter per run
(local with --no-preload); the difference is what Ray's placement costs per run.
node-loss: runs retried, attempts per run, and runs trained twice (a run that trained an epoch again that a
checkpoint had already saved: its epoch 1 done twice, or more completions than one) — must be 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medtransfer.study.folder import mean_dice_by_run  # noqa: E402

HEAD = {"num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                           "health_check_initial_delay_ms": 0}}
FAKE_BUNDLE = REPO / "tests" / "study" / "fake_bundle.py"
# long enough that the node is removed while the pretraining trains (4 epochs were over before a checkpoint was seen)
PRE_EPOCHS = 60


def start_cluster(nodes: int, **node_args):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=HEAD)
    workers = [cluster.add_node(num_cpus=1, **node_args) for _ in range(nodes)]
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    return cluster, workers


def stop_cluster(cluster) -> None:
    import ray

    ray.shutdown()
    cluster.shutdown()


def real_study(folder: Path, pretraining_epochs: int = 2) -> Path:
    from tests.study.conftest import tiny_study, write_study

    return write_study(folder, tiny_study(
        pretraining=[{"objective": "reconstruction",
                      "settings": {"max_epochs": pretraining_epochs, "iterations_per_epoch": 2}}],
        finetune={"strategies": ["scratch", "encoder"], "fractions": [0.1, 0.5], "seeds": [0],
                  "settings": {"max_epochs": 2, "iterations_per_epoch": 2}}))


def placement(work: Path) -> dict:
    from medtransfer.study.runner import run_study

    study_file = real_study(work)
    started = time.perf_counter()
    local = run_study(study_file, work / "local", workers=2, progress=False, report=False)
    local_seconds = time.perf_counter() - started
    cluster, _ = start_cluster(2)
    try:
        started = time.perf_counter()
        on_ray = run_study(study_file, work / "ray", executor="ray", progress=False, report=False)
        ray_seconds = time.perf_counter() - started
    finally:
        stop_cluster(cluster)
    status = json.loads((work / "ray" / "status.json").read_text())
    local_dice, ray_dice = mean_dice_by_run(work / "local"), mean_dice_by_run(work / "ray")
    return {
        "local_seconds": round(local_seconds, 1), "ray_seconds": round(ray_seconds, 1),
        "finished": [local["counts"]["finished"], on_ray["counts"]["finished"]],
        "runs_per_node": {node: summary["runs"] for node, summary in status["nodes"].items()},
        "same_run_ids": sorted(local_dice) == sorted(ray_dice),
        "max_abs_dice_difference": max(abs(local_dice[k] - ray_dice[k]) for k in local_dice),
    }


def overhead(work: Path) -> dict:
    import subprocess

    from medtransfer.study.runner import run_study
    from tests.study.conftest import fake_command, tiny_study, write_study

    content = tiny_study(finetune={"strategies": ["scratch", "encoder", "decoder"], "fractions": [0.1, 0.25, 0.5],
                                   "seeds": list(range(11)), "settings": {"max_epochs": 1}})
    study_file = write_study(work, content)  # 1 pretraining + 99 fine-tunes
    started = time.perf_counter()
    for index in range(10):  # the command alone, one after another
        subprocess.run([sys.executable, str(FAKE_BUNDLE), str(work / "bare" / str(index)), "finetune", "scratch",
                        "0.1", str(index)], check=True, stdout=subprocess.DEVNULL)
    bare = (time.perf_counter() - started) / 10
    started = time.perf_counter()
    local = run_study(study_file, work / "local", workers=2, progress=False, report=False,
                      command_factory=fake_command(), preload=False)
    local_seconds = time.perf_counter() - started
    cluster, _ = start_cluster(2)
    try:
        started = time.perf_counter()
        on_ray = run_study(study_file, work / "ray", executor="ray", progress=False, report=False,
                           command_factory=fake_command())
        ray_seconds = time.perf_counter() - started
    finally:
        stop_cluster(cluster)
    runs = local["counts"]["finished"]
    return {"runs": [runs, on_ray["counts"]["finished"]], "command_alone_seconds": round(bare, 3),
            "local_seconds_per_run": round(local_seconds / runs, 3),
            "ray_seconds_per_run": round(ray_seconds / runs, 3),
            "ray_minus_local_per_run": round((ray_seconds - local_seconds) / runs, 3)}


def node_loss(work: Path) -> dict:
    from medtransfer.study.cluster import read_attempts
    from medtransfer.study.runner import run_study

    study_file = real_study(work, pretraining_epochs=PRE_EPOCHS)
    study_dir = work / "ray"
    cluster, nodes = start_cluster(2)
    outcome: dict = {}
    try:
        driver = threading.Thread(target=lambda: outcome.update(
            run_study(study_file, study_dir, executor="ray", progress=False, report=False)))
        started = time.perf_counter()
        driver.start()
        pre = None
        while driver.is_alive():
            pre = next(iter((study_dir / "runs").glob("pre-*")), None) if (study_dir / "runs").is_dir() else None
            if pre is not None and (pre / "checkpoint.pt").is_file() and read_attempts(pre):
                break
            time.sleep(0.1)
        if pre is None or not (pre / "checkpoint.pt").is_file():
            raise SystemExit("the pretraining finished before a checkpoint was seen; raise PRE_EPOCHS")
        lost = read_attempts(pre)[0]["node_id"]
        cluster.remove_node(next(n for n in nodes if n.node_id == lost), allow_graceful=False)
        removed = time.perf_counter()
        driver.join()
        seconds = time.perf_counter() - started
        after_loss = time.perf_counter() - removed
    finally:
        stop_cluster(cluster)
    status = json.loads((study_dir / "status.json").read_text())
    twice = []
    for run_id in status["runs"]:
        log = (study_dir / "runs" / run_id / "log.txt").read_text()
        max_epochs = PRE_EPOCHS if run_id.startswith("pre-") else 2
        if log.count(f"medtransfer: epoch 1/{max_epochs} done") > 1:
            twice.append(run_id)
    attempts = {run_id: entry["attempts"] for run_id, entry in status["runs"].items()}
    return {"finished": outcome["counts"]["finished"], "failed": outcome["counts"]["failed"],
            "runs_retried": sum(1 for n in attempts.values() if n > 1), "attempts_per_run": attempts,
            "runs_trained_twice": len(twice), "seconds": round(seconds, 1),
            "seconds_after_node_loss": round(after_loss, 1),
            "retried_run_resumed": json.loads((pre / "run.json").read_text()).get("resumed"),
            "nodes": status["nodes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("placement", "overhead", "node-loss"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ray_cluster_"))
    os.environ.setdefault("MEDTRANSFER_HOME", str(work / "home"))
    result = {"placement": placement, "overhead": overhead, "node-loss": node_loss}[args.part](work)
    print(json.dumps({args.part: result}, indent=2))


if __name__ == "__main__":
    main()
