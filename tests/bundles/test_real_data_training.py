"""Short trainings on real data reach Dice floors far above an untrained network (CI runs these; no skip)."""

import json

import torch

from medtransfer.networks import build_dynunet
from tests.bundles.conftest import run_workflow


def _untrained_dice(spatial_dims, output, tmp_path, filters, seed, **settings):
    """Mean test Dice of the freshly initialised network, through the same evaluate overlay."""
    torch.manual_seed(seed)
    weights = tmp_path / "untrained.pt"
    torch.save(build_dynunet(spatial_dims, filters=filters).state_dict(), weights)
    run_workflow(spatial_dims, configs=("train.yaml", "evaluate.yaml"), output_dir=str(output), checkpoint=str(weights),
                 eval_split="test", filters=filters, seed=seed, **settings)
    return json.loads((output / "evaluation_test" / "summary.json").read_text())["mean"]["dice"]


def test_hc18_fetal_head_2d_reaches_dice_floor(test_data, tmp_path, medtransfer_home):
    output = tmp_path / "hc18"
    settings = {"data_manifest": "hc18_fetal_head", "data_root": str(test_data / "hc18_fetal_head"), "fraction": 1.0}
    run_workflow(2, output_dir=str(output), max_epochs=10, iterations_per_epoch=20, **settings)
    record = json.loads((output / "run.json").read_text())
    assert record["metrics"]["n_test_cases"] == 20
    assert record["metrics"]["mean_dice"] >= 0.75, record["metrics"]
    untrained = _untrained_dice(2, output, tmp_path, [16, 32, 64, 128, 256], 0, **settings)
    assert untrained < 0.5 and record["metrics"]["mean_dice"] - untrained > 0.3


def test_hippocampus_3d_few_cases_improves_well_above_untrained(test_data, tmp_path, medtransfer_home):
    output = tmp_path / "hippo"
    settings = {"data_manifest": "msd_hippocampus", "data_root": str(test_data / "msd_hippocampus"), "fraction": 0.05}
    run_workflow(3, output_dir=str(output), max_epochs=4, iterations_per_epoch=10, **settings)
    record = json.loads((output / "run.json").read_text())
    assert record["data"]["n_training"] == 10 and record["metrics"]["n_test_cases"] == 52
    trained = record["metrics"]["mean_dice"]
    untrained = _untrained_dice(3, output, tmp_path, [16, 32, 64, 128], 0, **settings)
    assert trained >= 0.6 and trained - untrained > 0.4, (trained, untrained)
    assert record["metrics"]["mean_hd95"] < 10.0  # millimetres (1 mm isotropic voxels)
