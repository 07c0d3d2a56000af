"""End to end: `python -m monai.bundle run ... --max_epoch 1` stops before training with "did you mean"."""

import os
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_a_misspelt_key_stops_a_real_bundle_run(tmp_path):
    configs = REPO_ROOT / "bundles" / "binary_seg_2d" / "configs"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs / "train.yaml"),
               "--bundle_root", str(configs.parent), "--output_dir", str(tmp_path / "run"), "--max_epoch", "1"]
    env = {**os.environ, "MEDTRANSFER_HOME": str(tmp_path / "home")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(REPO_ROOT), timeout=300)
    assert result.returncode != 0
    assert "--max_epoch: no such key" in result.stderr and "did you mean --max_epochs?" in result.stderr
    assert "epoch 1/" not in result.stdout + result.stderr  # stopped before the first epoch
    assert not (tmp_path / "run" / "run.json").exists()
