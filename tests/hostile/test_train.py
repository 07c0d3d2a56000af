"""Training runs (`monai.bundle run` + RunDirectory) and `export`: misspelt keys, folders in use, damaged records."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medtransfer.errors import FolderInUseError
from medtransfer.folder_lock import LOCK_NAME
from medtransfer.training.command_line import UnknownKeyError, check_command_line
from medtransfer.training.run_directory import RunDirectory, RunDirectoryError
from tests.conftest import REPO_ROOT
from tests.hostile.conftest import clear_error, medtransfer

CONFIGS = REPO_ROOT / "bundles" / "binary_seg_2d" / "configs"
BUNDLE_RUN = ["/venv/lib/python3/site-packages/monai/bundle/__main__.py", "run"]  # sys.argv of `python -m monai.bundle run`


def command(*args, config=f"['{CONFIGS / 'train.yaml'}','{CONFIGS / 'transfer' / 'encoder.yaml'}']"):
    return [*BUNDLE_RUN, "--config_file", config, "--bundle_root", str(CONFIGS.parent), *args]


MISSPELT = [
    ("max_epoch", ["--max_epoch", "1"], "did you mean --max_epochs?"),
    ("learning-rat", ["--learning_rat", "0.1"], "did you mean --learning_rate?"),
    ("filter", ["--filter", "[8,16]"], "did you mean --filters?"),
    ("equals-form", ["--max_epoch=1"], "did you mean --max_epochs?"),
    ("nested-unknown-top", ["--trian#trainer#max_epochs", "1"], "did you mean --train?"),
    ("no-close-match", ["--zzzzqqq", "1"], "--zzzzqqq: no such key"),
]


@pytest.mark.parametrize("args, needle", [c[1:] for c in MISSPELT], ids=[c[0] for c in MISSPELT])
def test_a_misspelt_command_line_key_is_refused(args, needle):
    with pytest.raises(UnknownKeyError, match=needle.replace("?", r"\?").replace("[", r"\[")):
        check_command_line(command(*args))


ACCEPTED = [
    ("known-keys", ["--max_epochs", "1", "--learning_rate", "0.01", "--output_dir", "/tmp/x"]),
    ("overlay-key", ["--source_checkpoint", "/x.pt", "--strategy", "encoder"]),
    ("nested-override", ["--train#trainer#max_epochs", "2", "--network_def#filters", "[8,16]"]),
    ("run-arguments", ["--meta_file", "m.json", "--logging_file", "l.conf", "--tracking", "mlflow"]),
    ("hyphenated", ["--max-epochs", "1"]),
]


@pytest.mark.parametrize("args", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_valid_command_lines_pass(args):
    check_command_line(command(*args))
    check_command_line(command(*args, config=f"{CONFIGS / 'train.yaml'},{CONFIGS / 'transfer' / 'encoder.yaml'}"))


def test_every_study_run_command_passes_the_key_check(medtransfer_home):
    from medtransfer.study.spec import bundle_command, load_study

    spec = load_study(REPO_ROOT / "studies" / "demo.yaml")
    for run in spec.expand():
        argv = bundle_command(run, spec.bundle_root, Path("/tmp/out"), source_checkpoint=Path("/tmp/s.pt"),
                              overwrite=True)
        check_command_line([BUNDLE_RUN[0], *argv[3:]])


def test_in_process_workflows_are_not_checked():
    check_command_line(["pytest", "-q", "--max_epoch", "1"])


# run folders ---------------------------------------------------------------------------------------------------
PARAMS = {"bundle": "binary_seg_2d", "seed": 0, "max_epochs": 1}


def test_a_run_folder_in_use_by_another_process_is_refused(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from medtransfer.folder_lock import FolderLock; "
        f"FolderLock({str(folder)!r}).acquire(); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUseError, match=f"run folder {folder} is in use by process {holder.pid}"):
            RunDirectory(folder, PARAMS).prepare()
        assert not (folder / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died (kill -9): its lock file is left behind and simply taken over
    assert (folder / LOCK_NAME).read_text().split()[0] == str(holder.pid)
    run = RunDirectory(folder, PARAMS).prepare()
    assert json.loads(run.record_path.read_text())["status"] == "running"


@pytest.mark.parametrize("content, needle", [
    (b"{\"status\": \"fini", "not a readable run record"),
    (b"", "not a readable run record"),
    (b"[1, 2]", "not a run record"),
    (b"\xff\xfe\x00", "not a readable run record"),
], ids=["truncated", "empty", "list", "non-utf8"])
def test_a_damaged_run_json_is_one_error_naming_it(content, needle, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_bytes(content)
    with pytest.raises(RunDirectoryError, match=needle) as error:
        RunDirectory(folder, PARAMS).prepare()
    assert str(folder / "run.json") in str(error.value)
    assert (folder / "run.json").read_bytes() == content  # never replaced


# export --------------------------------------------------------------------------------------------------------
EXPORTS = [
    ("no-run-folder", lambda d: None, "run.json"),
    ("corrupt-run-json", lambda d: (d.mkdir(), (d / "run.json").write_text("{")), "not a readable run record"),
    ("unfinished-run", lambda d: (d.mkdir(), (d / "run.json").write_text('{"status": "running"}')), "not finished"),
]


@pytest.mark.parametrize("setup, needle", [c[1:] for c in EXPORTS], ids=[c[0] for c in EXPORTS])
def test_export_of_a_bad_run_folder(setup, needle, guard, tmp_path, capsys):
    run = tmp_path / "run"
    setup(run)
    guard.snapshot()
    clear_error(medtransfer(["export", run, "--output", tmp_path / "bundle"], capsys), 2, needle)
    assert not (tmp_path / "bundle").exists()
