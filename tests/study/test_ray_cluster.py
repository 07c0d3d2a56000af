"""A real (tiny) study of real bundle runs on a multi-node Ray cluster (`ray.cluster_utils.Cluster`: separate
raylets with their own node ids and fake GPUs), one node removed mid-study: the lost pretraining is retried on the
other node, resumes from its checkpoint in the same run folder, and every run finishes exactly once."""

import io
import json
import threading
import time
from contextlib import redirect_stdout

import pytest
import ray
from ray.cluster_utils import Cluster

from medtransfer.study.cli_commands import main as study_cli
from medtransfer.study.cluster import read_attempts
from medtransfer.study.folder import mean_dice_by_run
from medtransfer.study.runner import run_study
from tests.study.conftest import tiny_study, write_study

# the head schedules nothing (0 CPUs), so removing a worker node never takes the GCS or the driver with it;
# a lost node is noticed after 3 missed health checks of 0.5 s (Ray's default is 5 of 3 s)
HEAD = {"num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                           "health_check_initial_delay_ms": 0}}


@pytest.fixture()
def two_gpu_nodes(medtransfer_home):
    cluster = Cluster(initialize_head=True, head_node_args=HEAD)
    nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


def epochs_done(log_text: str, epoch: int, max_epochs: int) -> int:
    return log_text.count(f"medtransfer: epoch {epoch}/{max_epochs} done")


# An epoch of one tiny iteration takes ~0.05 s on a quiet machine: 3 epochs were over before the test saw the
# checkpoint (a race that failed whenever the machine was idle); 60 epochs leave a window of seconds either way.
PRE_EPOCHS = 60


def test_a_real_study_survives_a_lost_node(two_gpu_nodes, tmp_path):
    cluster, nodes = two_gpu_nodes
    content = tiny_study(
        pretraining=[{"objective": "reconstruction",
                      "settings": {"max_epochs": PRE_EPOCHS, "iterations_per_epoch": 1}}],
        finetune={"strategies": ["encoder"], "fractions": [0.1], "seeds": [0],
                  "settings": {"max_epochs": 1, "iterations_per_epoch": 1}},
        resources={"pretraining": {"cpus": 1, "gpus": 1}, "finetune": {"cpus": 1, "gpus": 1}})
    study_file = write_study(tmp_path, content)
    study_dir = tmp_path / "out"
    outcome: dict = {}
    driver = threading.Thread(target=lambda: outcome.update(run_study(study_file, study_dir, executor="ray",
                                                                      progress=False, report=False)))
    driver.start()

    # remove the node that trains the pretraining once its first epoch is checkpointed (and before it finishes)
    deadline = time.monotonic() + 420  # a loaded machine needs minutes to start the raylets and the interpreter
    pre = None
    while time.monotonic() < deadline and driver.is_alive():
        pre = next((p for p in (study_dir / "runs").glob("pre-*")), None) if (study_dir / "runs").is_dir() else None
        if pre is not None and (pre / "checkpoint.pt").is_file() and read_attempts(pre):
            break
        time.sleep(0.1)
    assert pre is not None and (pre / "checkpoint.pt").is_file(), "the pretraining never wrote a checkpoint"
    lost_id = read_attempts(pre)[0]["node_id"]
    lost = next(node for node in nodes if node.node_id == lost_id)
    cluster.remove_node(lost, allow_graceful=False)
    removed_at = time.monotonic()
    driver.join(timeout=480)
    assert not driver.is_alive(), "the driver hung after a node was lost"

    status = json.loads((study_dir / "status.json").read_text())
    assert outcome["counts"]["finished"] == 2 and outcome["counts"]["failed"] == 0, status
    runs = status["runs"]
    retried = runs[pre.name]
    survivor = next(node.node_id for node in nodes if node.node_id != lost_id)
    assert retried["attempts"] == 2
    assert [a["node_id"] for a in read_attempts(pre)] == [lost_id, survivor]
    assert [p["node"].split("/")[1] for p in retried["placements"]] == [lost_id[:8], survivor[:8]]
    # the retry resumed from the checkpoint in the same folder: epoch 1 was trained once, and run.json says so
    log = (pre / "log.txt").read_text()
    assert epochs_done(log, 1, PRE_EPOCHS) == 1 and epochs_done(log, PRE_EPOCHS, PRE_EPOCHS) == 1
    assert json.loads((pre / "run.json").read_text())["resumed"] is True
    assert log.count("medtransfer: attempt ") == 2
    # the fine-tune ran once, on the node that survived; each run saw the GPU Ray assigned as its only device
    for run_id, entry in runs.items():
        assert entry["state"] == "finished" and entry["seconds"] > 0
        assert entry["resources"] == {"CPU": 1.0, "GPU": 1.0} and entry["gpu_ids"] == ["0"]
        assert "CUDA_VISIBLE_DEVICES='0'" in (study_dir / "runs" / run_id / "log.txt").read_text()
        if run_id != pre.name:
            assert entry["attempts"] == 1
            trained = (study_dir / "runs" / run_id / "log.txt").read_text()
            assert epochs_done(trained, 1, 1) == 1
    encoder = next(run_id for run_id in runs if "-encoder-" in run_id)
    assert runs[encoder]["node_id"] == survivor  # it waited for the pretraining, which ended on the survivor
    nodes_summary = status["nodes"]
    assert sum(n["attempts"] for n in nodes_summary.values()) == 3
    survivor_label = next(label for label in nodes_summary if label.endswith(survivor[:8]))
    assert nodes_summary[survivor_label]["runs"] == 2 and nodes_summary[survivor_label]["finished"] == 2
    lost_label = next(label for label in nodes_summary if label.endswith(lost_id[:8]))
    assert nodes_summary[lost_label] == {"runs": 0, "finished": 0, "failed": 0, "attempts": 1, "seconds": 0.0}

    printed = io.StringIO()
    with redirect_stdout(printed):
        assert study_cli(["study", "status", str(study_dir), "--all"]) == 0
    text = printed.getvalue()
    assert "2 attempt(s)" in next(line for line in text.splitlines() if pre.name in line)
    assert f"{lost_label}: 0 runs (0 finished, 0 failed), 1 attempts" in text
    print(f"\nnode lost {time.monotonic() - removed_at:.0f} s before the test's end; run seconds "
          f"{[round(e['seconds']) for e in runs.values()]}; attempts {[e['attempts'] for e in runs.values()]}")


def test_the_same_study_gives_the_same_runs_and_dice_on_ray_as_on_the_local_pool(two_gpu_nodes, tmp_path):
    """Results do not depend on the engine: same run ids and, seed for seed, the same test Dice."""
    study_file = write_study(tmp_path, tiny_study(
        pretraining=[],
        finetune={"strategies": ["scratch"], "fractions": [0.1, 0.5], "seeds": [0],
                  "settings": {"max_epochs": 1, "iterations_per_epoch": 2}}))
    local = run_study(study_file, tmp_path / "local", workers=1, progress=False, report=False)
    on_ray = run_study(study_file, tmp_path / "ray", executor="ray", progress=False, report=False)
    assert local["counts"]["finished"] == on_ray["counts"]["finished"] == 2
    local_dice, ray_dice = mean_dice_by_run(tmp_path / "local"), mean_dice_by_run(tmp_path / "ray")
    assert sorted(local_dice) == sorted(ray_dice) and len(local_dice) == 2
    for run_id, dice in local_dice.items():
        assert ray_dice[run_id] == pytest.approx(dice, abs=1e-4), run_id
    status = json.loads((tmp_path / "ray" / "status.json").read_text())
    assert all(entry["node_id"] for entry in status["runs"].values())  # placed by Ray, on a worker node
    assert len(set(local_dice.values())) == 2  # the two runs differ, so a swapped or shared result would show
    print(f"\nlocal Dice {local_dice}; Ray Dice {ray_dice}")  # measured: 0.2789 / 0.2497 on both, bit for bit
