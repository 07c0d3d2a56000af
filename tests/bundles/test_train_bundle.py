"""The 2D and 3D training bundles on the embedded synthetic default: outputs, refusal to overwrite, resume."""

import json

import pytest
import torch
from ignite.engine import Events

from tests.bundles.conftest import TINY, make_workflow, run_workflow
from tests.conftest import error_text


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_training_writes_weights_record_summary_and_tensorboard(spatial_dims, tmp_path, medtransfer_home):
    output = tmp_path / "run"
    run_workflow(spatial_dims, output_dir=str(output), **TINY[spatial_dims])
    record = json.loads((output / "run.json").read_text())
    assert record["status"] == "finished"
    assert record["config"]["seed"] == 0 and record["config"]["fraction"] == 1.0
    assert record["config"]["data_manifest"] == f"synthetic_{spatial_dims}d"
    assert len(record["config_hash"]) == 16
    assert record["epochs"] == 2 and record["iterations"] == 4
    assert record["best_epoch"] in (1, 2) and len(record["val_history"]) == 2
    assert record["metrics"]["n_test_cases"] == len(record["per_case"]) > 0
    assert 0.0 <= record["metrics"]["mean_dice"] <= 1.0
    assert {"dice", "hd95", "surface_dice"} <= set(record["per_case"][0])
    assert record["versions"]["monai"] and record["versions"]["torch"]
    assert record["wall_time_seconds"] > 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["n_cases"] == record["metrics"]["n_test_cases"]
    state = torch.load(output / "model.pt", weights_only=True)  # a plain state dict of tensors
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert not (output / "checkpoint.pt").exists()
    assert list((output / "tensorboard").glob("events.out.tfevents.*"))


def test_finished_run_is_never_overwritten_silently(tmp_path, medtransfer_home):
    output = tmp_path / "run"
    run_workflow(2, output_dir=str(output), **{**TINY[2], "max_epochs": 1})
    before = (output / "model.pt").read_bytes()
    with pytest.raises(Exception) as excinfo:
        make_workflow(2, output_dir=str(output), **{**TINY[2], "max_epochs": 1})
    assert "RunDirectoryError" in error_text(excinfo.value) and "holds a finished run" in error_text(excinfo.value)
    assert (output / "model.pt").read_bytes() == before
    run_workflow(2, output_dir=str(output), overwrite=True, **{**TINY[2], "max_epochs": 1, "seed": 1})
    assert json.loads((output / "run.json").read_text())["config"]["seed"] == 1


def test_interrupted_run_resumes_from_its_last_epoch(tmp_path, medtransfer_home):
    output = tmp_path / "run"
    settings = {**TINY[2], "max_epochs": 3}
    workflow = make_workflow(2, output_dir=str(output), **settings)
    trainer = workflow.trainer

    def crash(_engine):
        raise KeyboardInterrupt("simulated crash at the start of epoch 3")

    trainer.add_event_handler(Events.EPOCH_STARTED(once=3), crash)
    with pytest.raises(KeyboardInterrupt):
        workflow.run()
    record = json.loads((output / "run.json").read_text())
    assert record["status"] == "running" and (output / "checkpoint.pt").exists()
    saved = torch.load(output / "checkpoint.pt", weights_only=True)
    assert saved["trainer"]["iteration"] == 2 * settings["iterations_per_epoch"]

    with pytest.raises(Exception) as excinfo:
        make_workflow(2, output_dir=str(output), **{**settings, "learning_rate": 0.1})
    assert "unfinished run with another configuration (changed: learning_rate)" in error_text(excinfo.value)

    resumed = run_workflow(2, output_dir=str(output), **settings)
    record = json.loads((output / "run.json").read_text())
    assert record["status"] == "finished" and record["resumed"] is True
    assert record["epochs"] == 3 and record["iterations"] == 3 * settings["iterations_per_epoch"]
    assert len(record["seconds_per_epoch"]) == 1  # only epoch 3 ran after the resume
    assert [h["epoch"] for h in record["val_history"]] == [1, 2, 3]  # best-model state survived the crash
    assert resumed.trainer.state.epoch == 3


def _scalars(tensorboard_dir) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series = {}
    for events in sorted(tensorboard_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            series.setdefault(tag, []).extend(event.value for event in accumulator.Scalars(tag))
    return series


def test_run_records_precision_and_the_training_loss(tmp_path, medtransfer_home, capsys):
    from medtransfer.training import resolve_precision

    output = tmp_path / "run"
    run_workflow(2, output_dir=str(output), **TINY[2])
    expected = resolve_precision("auto", "cpu", announce=False)
    record = json.loads((output / "run.json").read_text())
    assert record["config"]["precision"] == expected.name  # hashed: what ran, not the word "auto"
    assert record["precision"]["requested"] == "auto" and record["precision"]["name"] == expected.name
    assert f"medtransfer: precision {expected.name}" in capsys.readouterr().out
    history = record["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["train_loss"] > 0 and h["train_loss"] == h["train_loss"] for h in history)  # finite, not NaN
    assert [h["val_dice"] for h in history] == [v["val_dice"] for v in record["val_history"]]
    assert record["early_stopping"] == {"patience": None, "min_epochs": 0, "smoothing": 1, "min_delta": 0.0,
                                        "stopped_early": False, "stopped_epoch": None}
    # two validations cannot show a plateau: the record says so rather than calling the run converged
    assert record["converged"]["value"] is False and "too few" in record["converged"]["reason"]
    assert 0 < record["validation_share"] < 1 and record["validation_seconds"] > 0
    assert record["data_cache_megabytes"]["train"] > 0 and record["data_cache_megabytes"]["validation"] > 0
    series = _scalars(output / "tensorboard")
    assert len(series["train_loss_iteration"]) == 4  # every iteration
    assert series["train_loss"] == pytest.approx([h["train_loss"] for h in history])  # epoch means
    assert series["train_loss"][0] == pytest.approx(sum(series["train_loss_iteration"][:2]) / 2)
    state = torch.load(output / "model.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_unknown_precision_is_refused_before_training(tmp_path, medtransfer_home):
    with pytest.raises(Exception) as excinfo:
        make_workflow(2, output_dir=str(tmp_path / "run"), precision="half", **TINY[2])
    assert "PrecisionError" in error_text(excinfo.value) and "valid values: auto, fp32, bf16, fp16" in error_text(
        excinfo.value
    )
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_early_stopping_stops_on_validation_dice_and_resumes_its_count(tmp_path, medtransfer_home):
    # learning rate 0: validation Dice never improves after epoch 1, so the stop epoch is exact
    settings = {**TINY[2], "max_epochs": 5, "learning_rate": 0.0, "early_stop_patience": 2}
    output = tmp_path / "run"
    workflow = make_workflow(2, output_dir=str(output), **settings)

    def crash(_engine):
        raise KeyboardInterrupt("simulated crash at the start of epoch 3")

    workflow.trainer.add_event_handler(Events.EPOCH_STARTED(once=3), crash)
    with pytest.raises(KeyboardInterrupt):
        workflow.run()
    run_workflow(2, output_dir=str(output), **settings)
    record = json.loads((output / "run.json").read_text())
    assert record["status"] == "finished" and record["resumed"] is True
    assert record["config"]["early_stop_patience"] == 2 and record["config"]["max_epochs"] == 5
    assert record["early_stopping"] == {"patience": 2, "min_epochs": 0, "smoothing": 1, "min_delta": 0.0,
                                       "stopped_early": True, "stopped_epoch": 3}
    assert record["epochs"] == 3 and record["best_epoch"] == 1
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3]  # the loss curve survived the crash too
