"""The Ray executor against a local Ray instance started by the test (fake bundle runs, no training)."""

import json

import pytest
import ray  # the optional extra medtransfer[ray]; the test extra installs it, so CI runs this test

from medtransfer.study.runner import run_study
from tests.study.conftest import fake_command


@pytest.fixture()
def local_ray(medtransfer_home):
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_study_on_a_local_ray_instance(local_ray, study_file, tmp_path):
    study_dir = tmp_path / "out"
    outcome = run_study(study_file, study_dir, executor="ray", progress=False,
                        command_factory=fake_command(fail={"ft-none-scratch-f0.5-s1"}))
    assert outcome["counts"]["finished"] == 12 and outcome["counts"]["failed"] == 1
    status = json.loads((study_dir / "status.json").read_text())
    assert status["driver"]["executor"] == "ray"
    failed = [e for e in status["runs"].values() if e["state"] == "failed"]
    assert "boom" in failed[0]["error"]
    assert (study_dir / "results.csv").is_file()
