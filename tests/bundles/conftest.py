"""Run the repository's bundles in-process with MONAI's ConfigWorkflow (what `monai.bundle run` does)."""

from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

from tests.conftest import REPO_ROOT

BUNDLES = REPO_ROOT / "bundles"

# Small enough for CI: a few iterations on tiny patches.
TINY = {
    2: {"max_epochs": 2, "iterations_per_epoch": 2, "batch_size": 2, "num_samples": 1, "patch_size": [64, 64],
        "filters": [8, 16, 32]},
    3: {"max_epochs": 2, "iterations_per_epoch": 2, "batch_size": 1, "num_samples": 1, "patch_size": [32, 32, 32],
        "filters": [8, 16, 32]},
}


def bundle_dir(spatial_dims: int) -> Path:
    return BUNDLES / f"binary_seg_{spatial_dims}d"


def make_workflow(spatial_dims: int, configs=("train.yaml",), workflow_type="train", **overrides) -> ConfigWorkflow:
    bundle = bundle_dir(spatial_dims)
    files = [str(bundle / "configs" / name) for name in configs]
    workflow = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(bundle / "configs" / "metadata.json"),
        workflow_type=workflow_type,
        bundle_root=str(bundle),
        **overrides,
    )
    workflow.initialize()
    return workflow


def run_workflow(spatial_dims: int, configs=("train.yaml",), workflow_type="train", **overrides):
    workflow = make_workflow(spatial_dims, configs, workflow_type, **overrides)
    workflow.run()
    workflow.finalize()
    return workflow


@pytest.fixture()
def tiny():
    return TINY
