"""Study test helpers: small study files and a fake bundle command (no training) for runner tests."""

import sys
from pathlib import Path

import pytest
import yaml

FAKE_BUNDLE = Path(__file__).with_name("fake_bundle.py")


def tiny_study(**changes) -> dict:
    """A 2-fraction × 2-seed grid on the embedded synthetic data: 1 pretraining + scratch/encoder/decoder."""
    content = {
        "name": "tiny",
        "spatial_dims": 2,
        "data_manifest": "synthetic_2d",
        "settings": {"filters": [8, 16, 32], "patch_size": [64, 64], "batch_size": 2, "num_samples": 1},
        "pretraining": [{"objective": "reconstruction", "settings": {"max_epochs": 2, "iterations_per_epoch": 2}}],
        "finetune": {"strategies": ["scratch", "encoder", "decoder"], "fractions": [0.1, 0.5], "seeds": [0, 1],
                     "settings": {"max_epochs": 2, "iterations_per_epoch": 2}},
    }
    content.update(changes)
    return content


def write_study(folder: Path, content: dict, name: str = "study.yaml") -> Path:
    path = Path(folder) / name
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def fake_command(fail: set[str] = frozenset()):
    """A command factory for StudyRunner that runs fake_bundle.py; runs whose id contains an element of `fail`
    crash with a traceback."""

    def factory(run, bundle_root, output_dir, source_checkpoint=None, overwrite=False):
        command = [sys.executable, str(FAKE_BUNDLE), str(output_dir), run.kind, str(run.strategy), str(run.fraction),
                   str(run.seed)]
        if any(part in run.run_id for part in fail):
            command.append("--fail")
        if source_checkpoint is not None:
            command += ["--source", str(source_checkpoint)]
        if overwrite:
            command.append("--overwrite")
        return command

    return factory


@pytest.fixture()
def study_file(tmp_path, medtransfer_home):
    return write_study(tmp_path, tiny_study())
