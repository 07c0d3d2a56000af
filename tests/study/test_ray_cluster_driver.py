"""The Ray executor's other guarantees on a multi-node `ray.cluster_utils.Cluster` (slow fake runs, no training):
a killed driver reattaches without training a run twice, a run whose resources no live node offers any more fails
instead of waiting forever, and a node that does not see the study folder is named before any run is placed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from medtransfer.study.cluster import ClusterError, RunResources, SharedStorageError, read_attempts, wait_for_folder
from medtransfer.study.executors import RayExecutor
from medtransfer.study.runner import run_study
from tests.study.conftest import tiny_study, write_study

REPO = Path(__file__).resolve().parents[2]
FAKE_TRAINING = REPO / "tests" / "study" / "fake_training.py"  # locks its folder, 3 epochs of 0.25 s
HEAD = {"num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                           "health_check_initial_delay_ms": 0}}


def fake_training(run, bundle_root, output_dir, source_checkpoint=None, overwrite=False):
    """Runs fake_training.py by path (Ray workers do not start in the repository)."""
    command = [sys.executable, str(FAKE_TRAINING), str(output_dir), run.kind, str(run.strategy), str(run.fraction),
               str(run.seed)]
    if source_checkpoint is not None:
        command += ["--source", str(source_checkpoint)]
    return command + (["--overwrite"] if overwrite else [])


DRIVER = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from medtransfer.study.runner import run_study
from tests.study.test_ray_cluster_driver import fake_training
run_study(sys.argv[1], sys.argv[2], executor="ray", address=sys.argv[3], progress=False, report=False,
          command_factory=fake_training)
"""


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args=HEAD)
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def wait_until(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_driver_reattaches_and_trains_no_run_twice(cluster, tmp_path, medtransfer_home):
    study_file = write_study(tmp_path, tiny_study(finetune={**tiny_study()["finetune"], "strategies": ["scratch", "encoder"],
                                                            "seeds": [0]}))  # 1 pretraining + 4 fine-tunes
    study_dir = tmp_path / "out"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(study_file), str(study_dir), cluster.address],
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def mid_study():
        status = json.loads((study_dir / "status.json").read_text()) if (study_dir / "status.json").is_file() else {}
        runs = (status.get("runs") or {}).values()
        finished = [e for e in runs if e["state"] == "finished"]
        running = [e for e in runs if e["state"] == "running"]
        return len(finished) >= 2 and running
    try:
        wait_until(mid_study, 120, "two finished runs and one running")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    runs = sorted((study_dir / "runs").iterdir())
    for folder in runs:  # Ray stops the dead driver's runs; wait until none holds its folder any more
        wait_for_folder(folder, 30)
    finished_before = {p.name for p in runs if (p / "completions.txt").is_file()}
    started_before = {p.name for p in runs if read_attempts(p)}
    assert finished_before and started_before - finished_before  # killed with runs in flight

    outcome = run_study(study_file, study_dir, executor="ray", progress=False, report=False,
                        command_factory=fake_training)
    assert outcome["counts"]["finished"] == 5 and outcome["already_finished"] >= len(finished_before)
    status = json.loads((study_dir / "status.json").read_text())
    for folder in sorted((study_dir / "runs").iterdir()):
        # every run finished exactly once: no second training of a finished run, no two in one folder at once
        assert (folder / "completions.txt").read_text() == "finished\n", folder.name
        attempts = read_attempts(folder)
        if folder.name in finished_before:
            assert len(attempts) == 1, folder.name  # finished runs stay finished
        elif folder.name in started_before:
            assert len(attempts) == 2, folder.name  # cut off with the driver, started again once
        assert status["runs"][folder.name]["attempts"] == len(attempts)


def test_a_run_no_live_node_can_take_fails_instead_of_waiting(cluster, tmp_path):
    gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)
    asks = {"pretrain": RunResources(1, 1), "finetune": RunResources(1, 1)}
    executor = RayExecutor(resources=asks, stranded_seconds=1.0)
    cluster.remove_node(gpu_node, allow_graceful=False)
    wait_until(lambda: not any(n["Alive"] and n["Resources"].get("GPU") for n in ray.nodes()), 30, "the node's end")

    class Run:
        kind, run_id = "finetune", "ft-x"
    log = tmp_path / "runs" / "ft-x" / "log.txt"
    handle = executor.submit_run(Run, [sys.executable, "-c", "pass"], str(log), {})
    started = time.monotonic()
    done = []
    while not done and time.monotonic() - started < 30:
        done = executor.wait([handle], timeout=0.5)
    assert done == [handle] and time.monotonic() - started < 10
    with pytest.raises(ClusterError, match=r"no live node of the Ray cluster has offered 1 CPU, 1 GPU for 1 s"):
        executor.result(handle)
    with pytest.raises(ClusterError, match="no node of the Ray cluster offers what a pretrain run asks"):
        RayExecutor(resources=asks)


def _unshare_works() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs unprivileged mount namespaces (unshare -rm)")
def test_a_node_that_does_not_see_the_study_folder_is_named_and_nothing_is_placed(cluster, tmp_path,
                                                                                   medtransfer_home):
    """A real third raylet whose file system hides the shared folder (a tmpfs over it, in its own mount
    namespace): the check names it, and no run folder is made."""
    shared = tmp_path / "shared"
    shared.mkdir()
    ray_command = Path(sys.executable).with_name("ray")
    node = subprocess.Popen(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs none {shared} && exec {ray_command} start "
         f"--address={cluster.address} --num-cpus=1 --resources='{{\"hidden\": 1}}' --block"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        hidden = wait_until(lambda: next((n for n in ray.nodes() if n["Alive"] and "hidden" in n["Resources"]), None),
                            60, "the hidden node")
        study_dir = shared / "study"
        with pytest.raises(SharedStorageError) as error:
            run_study(write_study(tmp_path, tiny_study()), study_dir, executor="ray", progress=False, report=False,
                      command_factory=fake_training)
        message = str(error.value)
        assert f"/{hidden['NodeID'][:8]} (host " in message
        assert f"does not see the study folder {study_dir.resolve()}" in message
        healthy = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != hidden["NodeID"]]
        assert healthy and not any(node_id[:8] in message for node_id in healthy)  # the other nodes passed
        assert not (study_dir / "runs").exists() and not (study_dir / ".storage-check").exists()
    finally:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()
        wait_until(lambda: not any(n["Alive"] and "hidden" in n["Resources"] for n in ray.nodes()), 30,
                   "the hidden node's end")
