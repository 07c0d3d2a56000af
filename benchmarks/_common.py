"""Shared helpers for the benchmark scripts: run a repository bundle in-process and time it."""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore")
logging.getLogger("monai").setLevel(logging.WARNING)
DATA = Path(os.environ.get("MEDTRANSFER_TEST_DATA", REPO.parent / "shared" / "data"))


def workflow(spatial_dims: int, configs=("train.yaml",), **overrides):
    from monai.bundle import ConfigWorkflow

    bundle = REPO / "bundles" / f"binary_seg_{spatial_dims}d"
    files = [str(bundle / "configs" / name) for name in configs]
    flow = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(bundle / "configs" / "metadata.json"),
        workflow_type="train",
        bundle_root=str(bundle),
        **overrides,
    )
    flow.initialize()
    return flow


class Stopwatch:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
