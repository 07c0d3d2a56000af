"""Experiment tracking the MONAI way: `monai.bundle run ... --tracking bundles/mlflow_tracking.yaml` logs the run's
parameters, the training loss and the validation Dice to a local MLflow store (SQLite, MONAI 1.6's default)."""

import json

import pytest

from tests.bundles.conftest import BUNDLES, TINY, run_workflow

mlflow = pytest.importorskip("mlflow")

SETTINGS = BUNDLES / "mlflow_tracking.yaml"


def test_one_epoch_with_mlflow_tracking_logs_params_loss_and_validation_dice(tmp_path, medtransfer_home, monkeypatch):
    store = tmp_path / "store" / "mlruns.db"
    uri = f"sqlite:///{store}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # MLflow's variable; MLFlowHandler honours it
    output = tmp_path / "run"
    settings = {**TINY[2], "max_epochs": 1, "iterations_per_epoch": 3, "learning_rate": 0.002, "seed": 3}
    run_workflow(2, output_dir=str(output), tracking=str(SETTINGS), **settings)  # what `--tracking FILE` calls

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("binary_seg_2d")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["learning_rate"] == "0.002" and params["seed"] == "3" and params["fraction"] == "1.0"
    assert params["strategy"] == "scratch" and params["max_epochs"] == "1" and params["epoch_length"] == "3"
    loss = client.get_metric_history(run.info.run_id, "train_loss_iteration")
    assert [m.step for m in loss] == [1, 2, 3] and all(0.0 < m.value < 10.0 for m in loss)
    (epoch_loss,) = client.get_metric_history(run.info.run_id, "train_loss")  # the epoch mean of those steps
    assert epoch_loss.step == 1 and abs(epoch_loss.value - sum(m.value for m in loss) / 3) < 1e-4
    dice = client.get_metric_history(run.info.run_id, "val_mean_dice")
    record = json.loads((output / "run.json").read_text())
    assert [m.step for m in dice] == [1]
    assert dice[0].value == pytest.approx(record["val_history"][0]["val_dice"], abs=1e-6)
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["run.json"]
    assert (store.parent / "mlruns").is_dir() and not (output / "mlruns.db").exists()
