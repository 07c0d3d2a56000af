"""The leakage guard: no stage sees target test images; supervised stages see no target labels unless allowed."""

import json

import nibabel as nib
import numpy as np
import pytest

from medtransfer.data import open_manifest
from medtransfer.study.leakage import (
    LeakageError,
    check_study_leakage,
    stage_leakage,
    target_label_sentences,
    target_labels_used,
)
from medtransfer.study.runner import run_study
from medtransfer.study.spec import load_study, parse_study
from tests.conftest import REPO_ROOT
from tests.study.conftest import fake_command, tiny_study, write_study

STUDIES = REPO_ROOT / "studies"


def _stage(objective, **extra):
    return {"objective": objective, "settings": {"max_epochs": 2, "iterations_per_epoch": 2}, **extra}


def test_unlabelled_objective_on_target_training_images_is_allowed(medtransfer_home):
    results = check_study_leakage(parse_study(tiny_study()))
    assert [(r.stage, r.target_images_used, r.target_labels_used, r.test_overlap) for r in results] == \
        [("reconstruction", 30, 0, [])]


def test_supervised_stage_on_target_labels_is_refused_unless_allowed(medtransfer_home):
    content = tiny_study(pretraining=[_stage("segmentation", name="seg"), _stage("classification")])
    with pytest.raises(LeakageError) as excinfo:
        check_study_leakage(parse_study(content))
    message = str(excinfo.value)
    assert "'seg'" in message and "'classification'" in message  # every offending stage is named
    assert "labels of 30 target training/validation case(s)" in message and "case_002" in message
    assert "target_labels: allowed" in message
    for stage in content["pretraining"]:
        stage["target_labels"] = "allowed"
    results = check_study_leakage(parse_study(content))
    assert [r.target_labels_used for r in results] == [30, 30]
    half = tiny_study(pretraining=[_stage("segmentation", fraction=0.5, target_labels="allowed")])
    assert [r.target_labels_used for r in check_study_leakage(parse_study(half))] == [15]


def test_bad_target_labels_value_is_a_study_error(medtransfer_home):
    from medtransfer.study.spec import StudyError

    with pytest.raises(StudyError, match="target_labels must be `allowed`"):
        parse_study(tiny_study(pretraining=[_stage("segmentation", target_labels="yes")]))


def _copy_manifest(tmp_path, target, copies):
    """A source manifest of 6 unrelated images plus re-saved (rescaled, noisy) copies of `copies` target cases."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "source"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    cases = []
    items = {item["id"]: item for split in ("training", "validation", "test") for item in target.datalist(split)}
    sources = [("own", None)] * 6 + [("copy", case_id) for case_id in copies]
    for index, (kind, case_id) in enumerate(sources):
        name = f"src_{index:02d}"
        if kind == "copy":
            array = np.asarray(nib.load(items[case_id]["image"]).dataobj, dtype=np.float32)
            array = array * 2.0 + 10 + rng.normal(0, 0.01, array.shape)  # another intensity scale: not an exact copy
        else:
            array = rng.random((128, 128)).astype(np.float32)
        label = (array > np.median(array)).astype(np.uint8)
        nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4)), folder / "images" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), folder / "labels" / f"{name}.nii.gz")
        cases.append({"id": name, "image": f"images/{name}.nii.gz", "label": f"labels/{name}.nii.gz"})
    ids = [c["id"] for c in cases]
    content = {"name": "copies", "dimensions": 2, "training": cases, "validation": [], "test": [],
               "fractions": {"1.0": ids}}
    path = tmp_path / "copies.json"
    path.write_text(json.dumps(content))
    return path, folder


def test_copies_of_target_test_images_under_other_names_are_refused_for_every_objective(tmp_path, medtransfer_home):
    target = open_manifest("synthetic_2d")
    test_ids = target.case_ids("test")[:2]
    path, folder = _copy_manifest(tmp_path, target, test_ids)
    stage = _stage("reconstruction", data_manifest=str(path), data_root=str(folder), target_labels="allowed")
    spec = parse_study(tiny_study(pretraining=[stage]), base=tmp_path)
    results = stage_leakage(spec)
    assert sorted(t for _, t, _ in results[0].test_overlap) == sorted(test_ids)
    assert {s for s, _, _ in results[0].test_overlap} == {"src_06", "src_07"}
    with pytest.raises(LeakageError, match=r"sees 2 image\(s\) of the target's TEST split: src_0[67]≈case_"):
        check_study_leakage(spec)  # `target_labels: allowed` does not allow test images


def test_classification_on_real_classes_of_target_images_uses_no_masks(tmp_path, medtransfer_home):
    content = json.loads((REPO_ROOT / "data_manifests" / "synthetic_2d.json").read_text())
    for split in ("training", "validation", "test"):
        for index, case in enumerate(content[split]):
            case["class"] = index % 2
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(content))
    target = open_manifest("synthetic_2d")
    stage = _stage("classification", data_manifest=str(path), data_root=str(target.data_root))
    results = check_study_leakage(parse_study(tiny_study(pretraining=[stage]), base=tmp_path))
    assert results[0].target_images_used == 30 and results[0].target_labels_used == 0


def test_run_study_refuses_before_training_and_records_the_counts(tmp_path, medtransfer_home):
    small = {"strategies": ["scratch", "encoder"], "fractions": [0.1], "seeds": [0],
             "settings": {"max_epochs": 1, "iterations_per_epoch": 1}}
    leaking = write_study(tmp_path, tiny_study(pretraining=[_stage("segmentation")], finetune=small))
    with pytest.raises(LeakageError):
        run_study(leaking, tmp_path / "refused", progress=False, command_factory=fake_command())
    assert not (tmp_path / "refused").exists()  # nothing created, nothing trained
    allowed = write_study(tmp_path, tiny_study(pretraining=[_stage("segmentation", target_labels="allowed")],
                                               finetune=small), name="allowed.yaml")
    run_study(allowed, tmp_path / "ok", progress=False, report=False, command_factory=fake_command())
    assert target_labels_used(tmp_path / "ok") == {"segmentation": 30}
    assert target_label_sentences(tmp_path / "ok") == [
        "Source `segmentation` used 30 target labels (target training/validation cases whose masks it learnt "
        "from; the study file allows it with `target_labels: allowed`)."]
    assert target_labels_used(tmp_path / "missing") == {}


# Real data ------------------------------------------------------------------------------------------------
def test_shipped_hc18_study_states_its_target_labels_and_is_refused_without(test_data, medtransfer_home, tmp_path):
    import yaml

    root = str(test_data / "hc18_fetal_head")
    results = check_study_leakage(load_study(STUDIES / "hc18_lowdata.yaml", data_root=root))
    assert {r.stage: r.target_labels_used for r in results} == {
        "reconstruction": 0, "contrastive_reconstruction": 0, "classification": 70, "segmentation": 70}
    content = yaml.safe_load((STUDIES / "hc18_lowdata.yaml").read_text())
    for stage in content["pretraining"]:
        stage.pop("target_labels", None)
    with pytest.raises(LeakageError, match="'segmentation'"):
        check_study_leakage(parse_study(content, base=STUDIES, data_root=root))  # its plan is relative to it


def test_busbra_source_is_disjoint_from_busi_and_busi_on_itself_leaks(test_data, medtransfer_home):
    content = tiny_study(data_manifest="busi_breast_us_lesions", pretraining=[
        _stage("segmentation", name="busbra_seg", data_manifest="busbra_breast_us_lesions",
               data_root=str(test_data / "busbra_breast_us_lesions")),
        _stage("classification", name="busbra_pathology", data_manifest="busbra_breast_us_lesions",
               data_root=str(test_data / "busbra_breast_us_lesions")),
    ])
    spec = parse_study(content, data_root=str(test_data / "busi_breast_us_lesions"))
    results = check_study_leakage(spec)
    assert [(r.target_images_used, r.test_overlap, r.target_labels_used) for r in results] == [(0, [], 0)] * 2
    content["pretraining"].append(_stage("segmentation", name="busi_seg"))
    with pytest.raises(LeakageError, match=r"'busi_seg' \(segmentation on busi_breast_us_lesions.*labels of 453"):
        check_study_leakage(parse_study(content, data_root=str(test_data / "busi_breast_us_lesions")))


def test_duplicates_across_the_target_splits_are_refused(tmp_path, medtransfer_home):
    target = open_manifest("synthetic_2d")
    content = json.loads(target.path.read_text())
    content.pop("generator")
    twin = dict(content["test"][0], id="twin_of_test")  # the same image file under a training id
    content["training"].append(twin)
    content["fractions"]["1.0"] = sorted([*content["fractions"]["1.0"], "twin_of_test"])
    path = tmp_path / "twins.json"
    path.write_text(json.dumps(content))
    spec = parse_study(tiny_study(data_manifest=str(path), pretraining=[]) | {
        "finetune": {"strategies": ["scratch"], "fractions": [1.0], "seeds": [0]}}, base=tmp_path,
        data_root=str(target.data_root))
    with pytest.raises(LeakageError, match=r"duplicate images across its splits.*twin_of_test≈case_"):
        check_study_leakage(spec)
