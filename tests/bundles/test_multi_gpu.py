"""One training over two processes (torchrun, DDP with the gloo backend on CPU): both replicas end identical."""

import json
import os
import subprocess
import sys

from tests.bundles.conftest import bundle_dir


def test_torchrun_two_processes_train_one_model_with_identical_replicas(tmp_path, medtransfer_home):
    bundle = bundle_dir(2)
    configs = f"['{bundle}/configs/train.yaml','{bundle}/configs/multi_gpu_train.yaml']"
    output = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", str(bundle),
        "--max_epochs", "2", "--iterations_per_epoch", "3", "--filters", "[8,16,32]", "--patch_size", "[64,64]",
        "--batch_size", "2", "--output_dir", str(output),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    replicas = json.loads((output / "ddp_replicas.json").read_text())
    assert replicas["world_size"] == 2 and replicas["identical"] is True
    record = json.loads((output / "run.json").read_text())
    assert record["status"] == "finished" and record["epochs"] == 2
    assert record["metrics"]["n_test_cases"] == 12
    assert [h["epoch"] for h in record["val_history"]] == [1, 2]
