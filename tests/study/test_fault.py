"""Fault test: `kill -9` of the study driver leaves no run behind, and a rerun trains every run exactly once."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from medtransfer.errors import FolderInUseError
from medtransfer.study.preloaded import supported
from medtransfer.study.runner import run_study
from tests.study import fake_training

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not supported(),
                                reason="parent-death signal and /proc: Linux")

DRIVER = """
import sys
from medtransfer.study.runner import run_study
from tests.study.fake_training import command_factory
run_study(sys.argv[1], sys.argv[2], workers=2, progress=False, report=False, command_factory=command_factory,
          preload=sys.argv[3] == "preload")
"""


def marked_processes(marker: str) -> list[int]:
    """Processes whose environment carries `marker` (the driver, its launcher and every run it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":  # a zombie has exited; only its parent's wait is missing
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def results(study_dir: Path) -> dict:
    out = {}
    for folder in sorted((study_dir / "runs").iterdir()):
        out[folder.name] = (json.loads((folder / "run.json").read_text()),
                            (folder / ("pretrained.pt" if folder.name.startswith("pre-") else "model.pt")).read_bytes())
    return out


@pytest.mark.parametrize("launch", ["preload", "subprocess"])
def test_kill_9_of_the_driver_leaves_no_run_and_a_rerun_trains_each_run_once(study_file, tmp_path, launch):
    # the reference and the rerun start runs as subprocesses (the launcher's torch import is slow on a busy CI
    # machine); the interrupted driver uses `launch`: the preloaded launcher is where runs used to survive
    reference = tmp_path / "reference"
    run_study(study_file, reference, workers=2, progress=False, report=False,
              command_factory=fake_training.command_factory, preload=False)

    study_dir = tmp_path / "interrupted"
    marker = f"MEDTRANSFER_FAULT_TEST={uuid.uuid4().hex}"
    key, value = marker.split("=")
    env = {**os.environ, key: value, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(study_file), str(study_dir), launch], env=env,
                              cwd=str(REPO), start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # midway: the pretraining run is finished and fine-tunes are training
        if len(list(study_dir.glob("runs/ft-*/epochs.txt"))) >= 2:
            break
        assert driver.poll() is None, "the driver ended before it could be interrupted"
        time.sleep(0.05)
    else:
        pytest.fail("the study never got to its fine-tunes")
    with pytest.raises(FolderInUseError, match=f"study folder {study_dir} is in use by process {driver.pid}"):
        run_study(study_file, study_dir, progress=False, command_factory=fake_training.command_factory)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    left = marked_processes(marker)
    for _ in range(100):  # at most 10 s
        if not left:
            break
        time.sleep(0.1)
        left = marked_processes(marker)
    assert left == [], f"processes of the killed study still running: {left}"
    interrupted = [p.parent.name for p in study_dir.glob("runs/*/epochs.txt") if not (p.parent / "run.json").exists()]
    assert interrupted, "the kill should have interrupted at least one run"

    run_study(study_file, study_dir, workers=2, progress=False, report=False,
              command_factory=fake_training.command_factory, preload=False)
    completions = {p.parent.name: p.read_text().count("finished") for p in study_dir.glob("runs/*/completions.txt")}
    assert len(completions) == 13 and set(completions.values()) == {1}  # every run trained to the end exactly once
    assert results(study_dir) == results(reference)
