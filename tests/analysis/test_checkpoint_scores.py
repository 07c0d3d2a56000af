"""Tests for checkpoint transferability scores, their Spearman correlation with Dice, and the handler."""

import json

import numpy as np

import pytest
import torch
from ignite.engine import Engine

from medtransfer.analysis.checkpoint_scores import RESULT_FILE, score_checkpoints, spearman_with_dice
from medtransfer.handlers.transferability import TransferabilityScore
from medtransfer.networks import build_dynunet, state_tensors

FILTERS = (4, 8, 16)


def test_spearman_with_dice_from_rows_and_mappings():
    rows = [{"epoch": e, "robustness": s, "logme": -s} for e, s in [(1, 0.3), (2, 0.2), (5, 0.1), (10, 0.15)]]
    dice = {"1": 0.5, "2": 0.6, "5": 0.8, "10": 0.7}  # JSON keys are strings
    result = spearman_with_dice({"checkpoints": rows}, dice)
    assert result["rho"] == pytest.approx(-1.0) and result["n"] == 4
    assert spearman_with_dice(rows, dice, "logme")["rho"] == pytest.approx(1.0)
    assert spearman_with_dice({1: 0.3, 2: 0.2}, dice)["rho"] is None  # n < 3


class RunDir:
    def __init__(self, path):
        self.path = path
        self.notes = {}


def _pretraining_run(folder, epochs=(1, 2)):
    entries = []
    for epoch in epochs:
        net = build_dynunet(2, out_channels=1, filters=FILTERS, init_seed=epoch)
        path = folder / "checkpoints" / f"epoch_{epoch:04d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"medtransfer_checkpoint": 1, "state_dict": {k: v.clone() for k, v in state_tensors(net).items()},
                    "trained_parts": ["encoder", "decoder", "head"], "objective": "reconstruction",
                    "epoch": epoch, "network": {"family": "dynunet", "spatial_dims": 2}}, path)
        entries.append({"epoch": epoch, "path": f"checkpoints/epoch_{epoch:04d}.pt", "sha256": str(epoch)})
    (folder / "run.json").write_text(json.dumps({
        "config": {"task": "pretraining", "spatial_dims": 2, "filters": list(FILTERS), "seed": 0,
                   "patch_size": [64, 64]},
        "pretraining": {"checkpoints": entries, "final": {"epoch": epochs[-1], "path": entries[-1]["path"],
                                                          "sha256": str(epochs[-1])}},
    }))


def test_score_checkpoints_on_real_hc18_writes_transferability_json(test_data, tmp_path):
    _pretraining_run(tmp_path)
    result = score_checkpoints(tmp_path, "hc18_fetal_head", n_images=6, data_root=test_data / "hc18_fetal_head")
    assert [row["epoch"] for row in result["checkpoints"]] == [1, 2]
    assert result["n_images"] == 6 and result["pool"] is False and result["level"] == "downsamples.0"
    for row in result["checkpoints"]:
        assert 0.0 <= row["robustness"] <= 0.5 + 1e-9 and row["logme"] is not None
    written = json.loads((tmp_path / RESULT_FILE).read_text())
    assert written["checkpoints"] == result["checkpoints"]
    again = score_checkpoints(tmp_path, "hc18_fetal_head", n_images=6, data_root=test_data / "hc18_fetal_head",
                              write=False)
    assert again["checkpoints"] == result["checkpoints"]  # seeded sample and augmentations


def test_handler_scores_at_scheduled_epochs_and_end(test_data, tmp_path):
    class Objective:
        unet = build_dynunet(2, out_channels=1, filters=FILTERS, init_seed=0)

    run_directory = RunDir(tmp_path)
    handler = TransferabilityScore(run_directory, Objective(), "hc18_fetal_head", spatial_size=[64, 64],
                                   checkpoint_epochs=[1], data_root=str(test_data / "hc18_fetal_head"), n_images=4)
    trainer = Engine(lambda engine, batch: None)
    handler.attach(trainer)
    trainer.run([0], max_epochs=3)
    notes = run_directory.notes["transferability"]
    assert [row["epoch"] for row in notes["checkpoints"]] == [1, 3]
    assert notes["n_images"] == 4 and all(row["logme"] is not None for row in notes["checkpoints"])

    disabled = TransferabilityScore(RunDir(tmp_path), Objective(), None, spatial_size=[64, 64])
    trainer = Engine(lambda engine, batch: None)
    disabled.attach(trainer)
    trainer.run([0], max_epochs=1)
    assert disabled.results == []


def test_small_samples_get_an_exact_permutation_p_value():
    from scipy.stats import permutation_test, spearmanr

    from medtransfer.analysis.checkpoint_scores import exact_spearman_p

    perfect = spearman_with_dice({1: 0.1, 2: 0.2, 3: 0.3}, {1: 0.5, 2: 0.6, 3: 0.7})
    assert perfect["rho"] == pytest.approx(1.0) and perfect["p_value"] == pytest.approx(2 / 6)  # not 0
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=6), rng.normal(size=6)
    rho = spearmanr(x, y).statistic
    reference = permutation_test((x,), lambda a: spearmanr(a, y).statistic, permutation_type="pairings",
                                 n_resamples=np.inf, alternative="two-sided").pvalue
    assert exact_spearman_p(x, y, rho) == pytest.approx(reference)
