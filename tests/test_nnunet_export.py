"""benchmarks/nnunet_side_by_side.py: the nnU-Net raw data set it writes from a manifest (no nnU-Net needed)."""

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medtransfer.atomic import sha256_of
from medtransfer.data import open_manifest
from medtransfer.data.checks import CaseError

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("nnunet_side_by_side", REPO / "benchmarks" / "nnunet_side_by_side.py")
side = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(side)

SPLITS = {"training": ["a_1", "a_2", "a_3"], "validation": ["b_1"], "test": ["c_1", "c_2"]}


def _manifest(root: Path, dimensions: int, channels: int, label_map=None, name="tiny") -> Path:
    rng = np.random.default_rng(0)
    suffix = ".png" if dimensions == 2 else ".nii.gz"
    cases = {}
    for split, ids in SPLITS.items():
        cases[split] = []
        for index, case_id in enumerate(ids):
            image_path, label_path = root / "images" / f"{case_id}{suffix}", root / "labels" / f"{case_id}{suffix}"
            image_path.parent.mkdir(parents=True, exist_ok=True)
            label_path.parent.mkdir(parents=True, exist_ok=True)
            label = np.zeros((12, 10) if dimensions == 2 else (6, 7, 5), dtype=np.uint8)
            label[2:5, 3:7] = 2 if label_map else 1
            label[0, 0] = 1 if label_map else 0  # a value the label_map sends to background
            if dimensions == 2:
                shape = (12, 10, 3) if channels == 3 else (12, 10)
                image = rng.integers(0, 255, shape, dtype=np.uint8)
                Image.fromarray(image).save(image_path)
                Image.fromarray(label).save(label_path)
            else:
                affine = np.diag([1.5, 2.0, 3.0, 1.0])
                nib.save(nib.Nifti1Image(rng.normal(size=label.shape).astype(np.float32), affine), str(image_path))
                nib.save(nib.Nifti1Image(label, affine), str(label_path))
            cases[split].append({"id": case_id, "image": f"images/{case_id}{suffix}", "label": f"labels/{case_id}{suffix}"})
    content = {"name": name, "dimensions": dimensions, "channels": channels, "modality": "US", "spacing": [1.0] * dimensions,
               **cases, "fractions": {"1.0": SPLITS["training"]}}
    if label_map:
        content["label_map"] = label_map
    path = root / f"{name}.json"
    path.write_text(json.dumps(content))
    return path


def test_png_export_keeps_the_split_maps_labels_and_writes_dataset_json(tmp_path):
    manifest = open_manifest(_manifest(tmp_path / "data", 2, 1, label_map={"1": 0, "2": 1}), tmp_path / "data")
    raw = tmp_path / "raw" / side.dataset_folder_name(901, manifest)
    assert raw.name == "Dataset901_Tiny"
    content = side.write_raw_dataset(manifest, raw)

    assert sorted(p.name for p in (raw / "imagesTr").iterdir()) == [f"{i}_0000.png" for i in ["a_1", "a_2", "a_3", "b_1"]]
    assert sorted(p.name for p in (raw / "labelsTr").iterdir()) == [f"{i}.png" for i in ["a_1", "a_2", "a_3", "b_1"]]
    assert sorted(p.name for p in (raw / "imagesTs").iterdir()) == ["c_1_0000.png", "c_2_0000.png"]
    assert sorted(p.name for p in (raw / "labelsTs").iterdir()) == ["c_1.png", "c_2.png"]
    source = np.asarray(Image.open(tmp_path / "data" / "images" / "a_2.png"))
    assert np.array_equal(np.asarray(Image.open(raw / "imagesTr" / "a_2_0000.png")), source)
    label = np.asarray(Image.open(raw / "labelsTs" / "c_1.png"))
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1}
    assert label.sum() == 12 and label[0, 0] == 0  # value 2 → 1 (3 × 4 pixels), value 1 → background

    assert json.loads((raw / "dataset.json").read_text()) == content
    assert content["channel_names"] == {"0": "US"}
    assert content["labels"] == {"background": 0, "foreground": 1}
    assert content["numTraining"] == 4 and content["file_ending"] == ".png"
    assert content["overwrite_image_reader_writer"] == "NaturalImage2DIO"
    assert content["medtransfer_manifest"]["training"] == 3 and content["medtransfer_manifest"]["test"] == 2

    splits = side.write_splits(manifest, tmp_path / "preprocessed")
    assert json.loads(splits.read_text()) == [{"train": ["a_1", "a_2", "a_3"], "val": ["b_1"]}]
    # the same export again is a resume; another manifest's export into that folder is refused
    assert side.write_raw_dataset(manifest, raw) == content
    other = open_manifest(_manifest(tmp_path / "other", 2, 1, name="other"), tmp_path / "other")
    with pytest.raises(side.BenchmarkError, match="another manifest"):
        side.write_raw_dataset(other, raw)
    with pytest.raises(side.BenchmarkError, match="another split"):
        (tmp_path / "preprocessed" / "splits_final.json").write_text(json.dumps([{"train": ["a_1"], "val": []}]))
        side.write_splits(manifest, tmp_path / "preprocessed")


def test_colour_png_becomes_one_grey_file_per_channel(tmp_path):
    manifest = open_manifest(_manifest(tmp_path / "data", 2, 3), tmp_path / "data")
    content = side.write_raw_dataset(manifest, tmp_path / "raw")
    assert content["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    rgb = np.asarray(Image.open(tmp_path / "data" / "images" / "c_2.png"))
    for channel in range(3):
        written = np.asarray(Image.open(tmp_path / "raw" / "imagesTs" / f"c_2_{channel:04d}.png"))
        assert written.ndim == 2 and np.array_equal(written, rgb[..., channel])
    assert len(list((tmp_path / "raw" / "imagesTr").iterdir())) == 4 * 3


def test_nifti_export_keeps_geometry_and_maps_labels(tmp_path):
    manifest = open_manifest(_manifest(tmp_path / "data", 3, 1, label_map={"1": 1, "2": 1}), tmp_path / "data")
    content = side.write_raw_dataset(manifest, tmp_path / "raw")
    assert content["file_ending"] == ".nii.gz" and "overwrite_image_reader_writer" not in content
    image = nib.load(str(tmp_path / "raw" / "imagesTr" / "b_1_0000.nii.gz"))
    source = nib.load(str(tmp_path / "data" / "images" / "b_1.nii.gz"))
    assert np.allclose(image.affine, source.affine) and np.array_equal(image.get_fdata(), source.get_fdata())
    label = nib.load(str(tmp_path / "raw" / "labelsTr" / "b_1.nii.gz"))
    assert np.allclose(label.affine, np.diag([1.5, 2.0, 3.0, 1.0]))
    values = np.asarray(label.dataobj)
    assert values.dtype == np.uint8 and values.sum() == 3 * 4 * 5 + 5  # the value-2 block and the value-1 row → 1


def test_bad_cases_are_refused_naming_the_file(tmp_path):
    manifest = open_manifest(_manifest(tmp_path / "data", 2, 1, label_map={"1": 0, "2": 1}), tmp_path / "data")
    label = np.asarray(Image.open(tmp_path / "data" / "labels" / "a_3.png")).copy()
    label[1, 1] = 7
    Image.fromarray(label).save(tmp_path / "data" / "labels" / "a_3.png")
    with pytest.raises(CaseError, match=r"a_3\.png: label is not binary: values \[0, 1, 2, 7\]"):
        side.write_raw_dataset(manifest, tmp_path / "raw")
    grey = open_manifest(_manifest(tmp_path / "grey", 2, 3), tmp_path / "grey")  # says RGB
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(tmp_path / "grey" / "images" / "a_1.png")
    with pytest.raises(CaseError, match=r"a_1\.png: expected 3 channels, got 1"):
        side.write_raw_dataset(grey, tmp_path / "raw_grey")


def _finished_run(folder: Path, cases: dict[str, float]) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"weights")
    record = {"status": "finished", "config": {"task": "segmentation", "patch_size": [96, 96], "batch_size": 8},
              "model_sha256": sha256_of(folder / "model.pt"), "wall_time_seconds": 600.0, "iterations": 1200,
              "per_case": [{"case": case, "dice": dice} for case, dice in cases.items()]}
    (folder / "run.json").write_text(json.dumps(record))
    return folder


def test_our_run_is_read_in_test_order_and_must_be_the_same_split(tmp_path):
    manifest = open_manifest(_manifest(tmp_path / "data", 2, 1), tmp_path / "data")
    run = side.our_run(_finished_run(tmp_path / "ours", {"c_2": 0.5, "c_1": 0.75}), manifest)
    assert run["dice"] == [0.75, 0.5] and run["plan"] == {"patch_size": [96, 96], "batch_size": 8}
    with pytest.raises(side.BenchmarkError, match=r"other test cases.*missing \['c_2'\], extra \['x_9'\]"):
        side.our_run(_finished_run(tmp_path / "other", {"c_1": 0.7, "x_9": 0.1}), manifest)


def test_projection_of_the_default_schedule_and_the_trainer_source_compiles():
    timing = {"train_iteration_seconds": [30.0, 2.0, 4.0, 3.0], "val_iteration_seconds": [1.0, 1.0]}
    rates = side.projection(timing)  # the first (warm-up) iteration is left out: median of 2, 4, 3
    assert rates["seconds_per_train_iteration"] == 3.0 and rates["seconds_per_val_iteration"] == 1.0
    assert rates["projected_default_schedule_seconds"] == 1000 * (250 * 3.0 + 50 * 1.0)
    compile(side.TRAINER_SOURCE, side.TRAINER + ".py", "exec")
    assert f"class {side.TRAINER}(nnUNetTrainer)" in side.TRAINER_SOURCE


def test_report_puts_both_plans_and_both_dice_side_by_side(tmp_path):
    timing = {"train_iteration_seconds": [30.0, 9.0, 9.0], "val_iteration_seconds": [2.0], "training_wall_seconds": 601.0,
              "iterations": 3, "epochs": 1, "iterations_per_epoch": 10, "stop_reason": "budget reached during epoch 0"}
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"plan": {"patch_size": [128, 128], "filters": [32, 64, 128, 256, 512], "pools": 4,
                                              "batch_size": 4, "max_epochs": 40, "iterations_per_epoch": 25}}))
    plan = json.loads(plan_file.read_text())["plan"]
    result = {"manifest": "tiny", "file_ending": ".png", "seconds": {"predict": 90.0}, "load_average": [3.1, 2.0, 1.5], "our_plan": plan,
              "our_plan_source": str(plan_file),
              "nnunet": {"version": "2.8.1", "timing": timing, "projection": side.projection(timing),
                         "dice": [0.5, 0.7],
                         "plan": {"configuration": "2d", "patch_size": [160, 192], "spacing": [1.0, 1.0], "batch_size": 26,
                                  "network": "PlainConvUNet", "n_stages": 6,
                                  "features_per_stage": [32, 64, 128, 256, 512, 512]}},
              "ours": [{"dice": [0.8, 0.9], "wall_time_seconds": 1200.0, "iterations": 1000, "plan": {}}]}
    text = side.report(result)
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    assert "160 × 192" in lines["patch"] and lines["patch"].endswith("128 × 128")
    assert lines["batch"].split()[1:] == ["26", "4"]
    assert "PlainConvUNet, 6 stages" in lines["network"] and lines["network"].endswith("DynUNet, 5 stages")
    assert lines["test Dice (mean ± sd)"].split("  ")[-1].strip() == "0.850 ± 0.071 (n=2)"
    assert "0.600 ± 0.141 (n=2)" in lines["test Dice (mean ± sd)"]
    assert "10.0 min" in lines["training wall time"] and lines["training wall time"].endswith("20.0 min")
    # 1000 × (250 × 9 s + 50 × 2 s) = 2 350 000 s = 27.2 days
    assert "9.00 s per training iteration" in text and "27.2 d (39.2 min per epoch)" in text
    assert "PNG axes: nnU-Net reads (height, width)" in text and "prediction 1.5 min" in text
    # with --tta the same trained model is scored again: the report says so and times the mirrored prediction
    mirrored = side.report({**result, "tta": True, "seconds": {"predict": 90.0, "predict_tta": 360.0}})
    assert "nnU-Net predicts with its mirroring" in mirrored and "prediction 6.0 min (with mirroring)" in mirrored
    assert "mirroring" not in text


def test_tta_is_a_prediction_choice_not_another_work_folder(tmp_path):
    state = {"manifest": "tiny", "manifest_sha256_12": "abc", "configuration": "2d", "minutes": 60.0,
             "iterations": 25, "val_iterations": 5, "dataset_id": 901, "nnunetv2": "2.8.1"}
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / side.STATE_NAME).write_text(json.dumps({**state, "tta": False}))  # written before --tta moved
    (folder / "nnUNet_results").mkdir()
    side._check_workdir(folder, state, overwrite=False)  # the trained folder is reused, not refused
    assert (folder / "nnUNet_results").is_dir()
    with pytest.raises(side.BenchmarkError, match=r"another configuration \(differs in \['minutes'\]\)"):
        side._check_workdir(folder, {**state, "minutes": 10.0}, overwrite=False)
