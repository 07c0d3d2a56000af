"""The plan: fingerprint by MONAI's DataAnalyzer, nnU-Net's geometry rules, the bundle keys a run takes from it."""

import copy
import json

import numpy as np
import pytest
from PIL import Image

from medtransfer.atomic import save_json
from medtransfer.data import open_manifest
from medtransfer.data.manifest_builder import build_manifest
from medtransfer.planning import PlanError, PlannedDefaults, load_plan, make_plan, static_value
from medtransfer.planning.rules import plan_budget, plan_geometry

# A fingerprint shaped like BUSI's (192 x 160 median, lesions of 65 x 37 px, 453 cases).
BUSI_LIKE = {
    "data_manifest": "busi_like", "dimensions": 2, "channels": 1, "n_cases": 453,
    "shape": {"median": [192.0, 160.0], "max": [192, 192], "min": [129, 142]},
    "spacing": {"median": [1.0, 1.0], "min": [1.0, 1.0], "max": [1.0, 1.0]},
    "foreground_object": {"median": [65.0, 37.0]},
}


def _folder(tmp_path, n=12, size=(96, 80), empty=False):
    """images/ + labels/ of grey PNGs, each with one bright disc (its label), seeded."""
    rng = np.random.default_rng(0)
    for folder in ("images", "labels"):
        (tmp_path / "data" / folder).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[: size[1], : size[0]]
    for index in range(n):
        cy, cx, r = rng.integers(25, size[1] - 25), rng.integers(25, size[0] - 25), rng.integers(6, 12)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (not empty)
        image = (rng.normal(60, 10, mask.shape) + 120 * mask).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(tmp_path / "data" / "images" / f"case_{index:02d}.png")
        Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "data" / "labels" / f"case_{index:02d}.png")
    path = tmp_path / "toy.json"
    save_json(path, build_manifest(tmp_path / "data", name="toy", near_duplicates=False))
    return open_manifest(path, tmp_path / "data")


def test_busi_like_geometry_follows_nnunet_rules():
    geometry = plan_geometry(BUSI_LIKE, None)
    assert geometry["target_spacing"] is None  # every case has the same spacing: no resampling
    assert geometry["patch_size"] == [192, 160]  # the median image (nnU-Net's start; it chose 160 x 192 too)
    assert geometry["pools"] == 5 and geometry["filters"] == [16, 32, 64, 128, 256, 256]
    budget = plan_budget(BUSI_LIKE, geometry, n_validation=65, minutes=15)
    assert budget["num_samples"] == 1 and budget["batch_size"] == 9  # 262144 px per step / 30720 px per patch
    assert budget["iterations"] == budget["max_epochs"] * budget["iterations_per_epoch"]
    assert 25 <= budget["iterations_per_epoch"] <= 250
    # twice the budget, twice the iterations (within one epoch's rounding)
    doubled = plan_budget(BUSI_LIKE, geometry, n_validation=65, minutes=30)
    assert abs(doubled["iterations"] - 2 * budget["iterations"]) <= budget["iterations_per_epoch"]
    assert budget["early_stop_min_epochs"] == int(np.ceil(0.3 * budget["max_epochs"]))
    # the modelled iteration matches what a planned BUSI run measured end to end on quiet cores, 2 threads
    # ((wall - validation s) / iterations = 0.565 s): the planner's minutes are wall minutes
    assert abs(budget["step_seconds"] - 0.565) / 0.565 < 0.15
    # and plan --measure's path: a measured network step (0.49 s for this plan) times the same overhead
    from medtransfer.planning.rules import STEP_OVERHEAD
    measured = plan_budget(BUSI_LIKE, geometry, n_validation=65, minutes=15, step_seconds=0.49 * STEP_OVERHEAD[2])
    assert abs(measured["step_seconds"] - 0.565) / 0.565 < 0.15
    # a machine 3x slower (measured): validation is convolution work too, so it scales alike and keeps its share
    # (and three times the minutes buy the same iterations)
    slow = plan_budget(BUSI_LIKE, geometry, n_validation=65, minutes=45, step_seconds=3 * budget["step_seconds"])
    assert slow["machine_factor"] == pytest.approx(3, rel=1e-3) and budget["machine_factor"] == 1
    assert slow["validation_seconds_estimate"] == pytest.approx(3 * budget["validation_seconds_estimate"], abs=0.02)
    assert slow["iterations_per_epoch"] == budget["iterations_per_epoch"]
    assert abs(slow["iterations"] - budget["iterations"]) <= budget["iterations_per_epoch"]


def test_heterogeneous_spacing_resamples_to_the_median_and_an_object_too_large_is_refused():
    fingerprint = copy.deepcopy(BUSI_LIKE)
    fingerprint["spacing"] = {"median": [0.5, 0.5], "min": [0.4, 0.4], "max": [0.8, 0.8]}
    assert plan_geometry(fingerprint, None)["target_spacing"] == [0.5, 0.5]
    fingerprint["foreground_object"]["median"] = [150.0, 37.0]  # fills most of the image: the whole image will do
    assert plan_geometry(fingerprint, [0.5, 0.5])["patch_size"] == [192, 160]
    fingerprint["foreground_object"]["median"] = [140.0, 37.0]
    fingerprint["spacing"]["median"] = [0.25, 0.5]  # at 0.5 mm the object is 70 px, twice that 140 > the image
    assert plan_geometry(fingerprint, [0.5, 0.5])["patch_size"][0] == 96
    fingerprint["spacing"]["median"] = [1.0, 0.5]  # at 0.5 mm: a 280-px object, beyond the 256-px cap
    with pytest.raises(PlanError, match=r"busi_like: the median foreground object \(280 voxels on axis 0 after "
                                        r"resampling to \[0.5, 0.5\]\) does not fit the CPU cap of 256"):
        plan_geometry(fingerprint, [0.5, 0.5])


def test_plan_of_a_real_folder_and_the_bundle_keys_a_run_takes(tmp_path, capsys):
    manifest = _folder(tmp_path)
    plan = make_plan(manifest, minutes=5)
    data = plan["fingerprint"]
    assert data["analyser"].startswith("monai.apps.auto3dseg.DataAnalyzer")
    assert data["shape"]["median"] == [96.0, 80.0] and data["n_cases"] == len(manifest.case_ids("training"))
    assert 12 <= data["foreground_object"]["median"][0] <= 24  # discs of radius 6-11
    assert 0 < data["foreground_share"]["median"] < 0.1 and data["cases_without_foreground"] == []
    assert plan["bundle_keys"]["patch_size"] == [96, 80] and plan["bundle_keys"]["augmentation"] == "nnunet"
    path = tmp_path / "plan.json"
    save_json(path, plan)
    planned = PlannedDefaults(str(path), spatial_dims=2)
    assert planned.value("patch_size", [128, 128]) == [96, 80] and planned.value("learning_rate", 0.1) == 0.1
    resolved = {**plan["bundle_keys"], "batch_size": 3}
    planned.announce(resolved)
    out = capsys.readouterr().out
    assert f"medtransfer: plan key batch_size overridden: given 3, plan {plan['bundle_keys']['batch_size']}" in out
    assert out.count("overridden") == 1 and "patch_size [96, 80]" in out
    record = planned.record()
    assert record["sha256"] == planned.digest and record["overridden"] == {
        "batch_size": {"plan": plan["bundle_keys"]["batch_size"], "given": 3}}
    with pytest.raises(PlanError, match="a 2D plan cannot drive a 3D bundle"):
        PlannedDefaults(str(path), spatial_dims=3)
    # the study reads planned keys statically: the plan's value, else the literal default
    raw = {"max_epochs": "$@planned.value('max_epochs', 30)"}
    assert static_value(raw, "max_epochs") == 30
    assert static_value({**raw, "plan": str(path)}, "max_epochs") == plan["bundle_keys"]["max_epochs"]


def test_a_machine_unlike_the_constants_one_is_timed_not_modelled(tmp_path, monkeypatch, capsys):
    """The step constants were measured on a CPU that trains in bf16; on a CPU without it (fp32, 3.2x slower on the
    planned BUSI step) or a GPU, make_plan times the planned network itself, and the plan says why."""
    from medtransfer.planning import plan as planning
    from medtransfer.planning.rules import STEP_OVERHEAD
    from medtransfer.training import precision
    from medtransfer.training.precision import PrecisionChoice

    manifest = _folder(tmp_path)
    timed = []
    monkeypatch.setattr(planning, "measure_step_seconds", lambda *args, **kwargs: timed.append(args) or 0.05)
    choice = {"now": PrecisionChoice("auto", "bf16", "cpu", "CPU with native bf16")}
    monkeypatch.setattr(planning.os, "getloadavg", lambda: (0.2, 0.2, 0.2))  # quiet cores
    monkeypatch.setattr(precision, "resolve_precision", lambda *args, **kwargs: choice["now"])
    modelled = planning.make_plan(manifest, minutes=5)
    assert timed == [] and modelled["plan"]["step_seconds_source"] == "modelled from the measured constants"
    choice["now"] = PrecisionChoice("auto", "fp32", "cpu", "CPU without native bf16")
    measured = planning.make_plan(manifest, minutes=5)
    assert len(timed) == 1 and timed[0][3] == measured["plan"]["filters"]
    assert measured["plan"]["step_seconds"] == round(0.05 * STEP_OVERHEAD[2], 4)
    assert measured["plan"]["step_seconds_source"] == (
        "measured (the step constants were measured on a CPU training in bf16; this cpu trains in fp32 "
        "(CPU without native bf16))")
    assert "timing the planned network on this machine (as plan --measure)" in capsys.readouterr().out
    # asked for, it measures whatever the machine
    choice["now"] = PrecisionChoice("auto", "bf16", "cpu", "CPU with native bf16")
    assert planning.make_plan(manifest, minutes=5, measure=True)["plan"]["step_seconds_source"] == \
        "measured (plan --measure)" and len(timed) == 2
    # a GPU plan made on a machine without one keeps the constants and says so; --measure there is refused
    import torch

    if not torch.cuda.is_available():
        gpu = planning.make_plan(manifest, minutes=5, device="cuda")["plan"]
        assert gpu["step_seconds_source"] == "modelled from the measured CPU constants (no GPU here to time the step)"
        assert gpu["filters"][0] == 32 and len(timed) == 2  # nnU-Net's base width; nothing timed
        with pytest.raises(PlanError, match=r"toy: plan --measure --device cuda .* this machine has no CUDA GPU"):
            planning.make_plan(manifest, minutes=5, measure=True, device="cuda")
    # timed on busy cores, the step is an upper bound: the plan says so and warns
    monkeypatch.setattr(planning.os, "getloadavg", lambda: (2.6, 2.0, 1.0))
    monkeypatch.setattr(planning.os, "cpu_count", lambda: 4)
    busy = planning.make_plan(manifest, minutes=5, measure=True)["plan"]["step_seconds_source"]
    assert busy == "measured (plan --measure); the CPU was busy (load average 2.6 on 4 cores)"
    assert "the measured step is an upper bound" in capsys.readouterr().out
    monkeypatch.setattr(planning.os, "getloadavg", lambda: (1.9, 2.0, 1.0))  # under half the cores: quiet enough
    assert planning.make_plan(manifest, minutes=5, measure=True)["plan"]["step_seconds_source"] == \
        "measured (plan --measure)"


def test_no_foreground_and_bad_plan_files_are_named(tmp_path):
    manifest = _folder(tmp_path, n=6, empty=True)
    with pytest.raises(PlanError, match=r"toy: no training case has foreground \(checked \d+ label files, e\.g\. .*labels/case_"):
        make_plan(manifest)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(PlanError, match=r"bad.json: not a medtransfer plan \(format 'something-else'"):
        load_plan(bad)
    with pytest.raises(PlanError, match="plan file not found"):
        load_plan(tmp_path / "missing.json")
