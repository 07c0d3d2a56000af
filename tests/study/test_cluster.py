"""Cluster pieces that need no Ray cluster: the `resources` key and its precedence, status per node."""

import pytest

from medtransfer.study.cluster import (
    RunResources,
    node_summary,
    parse_resources,
    placement_fields,
    resolve_resources,
)
from medtransfer.study.runner import run_study
from medtransfer.study.spec import StudyError, parse_study
from medtransfer.atomic import save_json
from tests.study.conftest import tiny_study, write_study


def test_resources_per_stage_and_the_command_line_over_the_study_file():
    study = parse_resources({"pretraining": {"cpus": 8, "gpus": 1}, "finetune": {"gpus": 0.5}})
    assert study == {"pretrain": {"cpus": 8.0, "gpus": 1.0}, "finetune": {"gpus": 0.5}}
    assert resolve_resources(study) == {"pretrain": RunResources(8.0, 1.0), "finetune": RunResources(1.0, 0.5)}
    assert resolve_resources(study, gpus_per_run=0) == {"pretrain": RunResources(8.0, 0.0),
                                                        "finetune": RunResources(1.0, 0.0)}
    assert resolve_resources(None, cpus_per_run=2) == {"pretrain": RunResources(2.0, 0.0),
                                                       "finetune": RunResources(2.0, 0.0)}
    with pytest.raises(ValueError, match="no CPU and no GPU"):
        resolve_resources(None, cpus_per_run=0)


def test_runs_per_node():
    node = {"CPU": 16.0, "GPU": 4.0}
    assert RunResources(4, 1).fits(node) == 4
    assert RunResources(2, 0.5).fits(node) == 8
    assert RunResources(1, 1).fits({"CPU": 16.0}) == 0  # a CPU node takes no GPU run
    assert RunResources(3, 0).fits(node) == 5


@pytest.mark.parametrize("raw, message", [
    ({"pretrain": {"cpus": 1}}, r"resources: unknown key\(s\) pretrain; allowed: pretraining, finetune"),
    ({"finetune": {"gpu": 1}}, r"resources.finetune: a mapping with cpus and/or gpus"),
    ({"finetune": {"cpus": -1}}, r"resources.finetune.cpus: a number ≥ 0, got -1"),
    ({"finetune": {"cpus": 0}}, r"resources.finetune: a run must ask for at least some CPU or GPU"),
    ([1, 2], r"resources: a mapping with pretraining and/or finetune, got list"),
])
def test_a_bad_resources_key_is_a_study_error_naming_it(medtransfer_home, raw, message):
    with pytest.raises(StudyError, match=message):
        parse_study(tiny_study(resources=raw))


def test_resources_do_not_change_the_study_or_its_run_ids(medtransfer_home):
    plain = parse_study(tiny_study())
    placed = parse_study(tiny_study(resources={"pretraining": {"cpus": 4, "gpus": 1}}))
    assert placed.resources == {"pretrain": {"cpus": 4.0, "gpus": 1.0}} and plain.resources == {}
    assert placed.content_hash == plain.content_hash
    assert [r.run_id for r in placed.expand()] == [r.run_id for r in plain.expand()]


def test_gpus_per_run_without_ray_is_refused_before_anything_runs(tmp_path, medtransfer_home):
    with pytest.raises(StudyError, match="--cpus-per-run and --gpus-per-run place runs on a Ray cluster"):
        run_study(write_study(tmp_path, tiny_study()), tmp_path / "out", gpus_per_run=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_status_fields_and_the_summary_per_node(tmp_path):
    lost = {"node_id": "aaaaaaaa11", "node_ip": "10.0.0.1", "host": "a", "gpu_ids": ["1"],
            "resources": {"CPU": 1.0, "GPU": 1.0}, "started_at": "t0"}
    kept = {**lost, "node_id": "bbbbbbbb22", "node_ip": "10.0.0.2", "host": "b", "gpu_ids": ["0"], "seconds": 30.0,
            "returncode": 0}
    save_json(tmp_path / "r1" / "attempts.json", [lost, kept])
    save_json(tmp_path / "r2" / "attempts.json", [kept])
    one, two = placement_fields(tmp_path / "r1"), placement_fields(tmp_path / "r2")
    assert one["node"] == "10.0.0.2/bbbbbbbb" and one["attempts"] == 2 and one["gpu_ids"] == ["0"]
    assert [p["node"] for p in one["placements"]] == ["10.0.0.1/aaaaaaaa", "10.0.0.2/bbbbbbbb"]
    assert placement_fields(tmp_path / "never-placed") == {}
    entries = {"r1": {**one, "state": "finished", "seconds": 30.0}, "r2": {**two, "state": "failed", "seconds": 5.0},
               "r3": {"state": "pending"}}
    assert node_summary(entries) == {
        "10.0.0.1/aaaaaaaa": {"runs": 0, "finished": 0, "failed": 0, "attempts": 1, "seconds": 0.0},
        "10.0.0.2/bbbbbbbb": {"runs": 2, "finished": 1, "failed": 1, "attempts": 2, "seconds": 30.0},
    }
