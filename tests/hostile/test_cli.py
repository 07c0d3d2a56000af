"""The `medtransfer` command itself: one line per error, the traceback only with --debug / MEDTRANSFER_DEBUG=1."""

import pytest
import yaml

from medtransfer import cli
from medtransfer.study.spec import StudyError
from tests.hostile.conftest import clear_error, medtransfer
from tests.study.conftest import tiny_study


@pytest.fixture()
def bad_study(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study(name="../x")))
    return path


def test_debug_anywhere_on_the_line_shows_the_traceback(bad_study):
    with pytest.raises(StudyError, match="not a plain name"):
        cli.main(["study", "run", str(bad_study), "--debug"])


def test_debug_environment_variable(bad_study, monkeypatch):
    monkeypatch.setenv("MEDTRANSFER_DEBUG", "1")
    with pytest.raises(StudyError):
        cli.main(["study", "run", str(bad_study)])


def test_debug_zero_is_off(bad_study, monkeypatch, capsys):
    monkeypatch.setenv("MEDTRANSFER_DEBUG", "0")
    clear_error(medtransfer(["study", "run", bad_study], capsys), 2, "not a plain name")


@pytest.mark.parametrize("error, code, needle", [
    (KeyError("spatial_dims"), 1, "KeyError: 'spatial_dims' (rerun with --debug"),
    (IsADirectoryError(21, "Is a directory", "/data/scan.nii.gz"), 2, "/data/scan.nii.gz: Is a directory"),
    (PermissionError(13, "Permission denied", "/data/locked.json"), 2, "/data/locked.json: Permission denied"),
    (OSError(28, "No space left on device"), 2, "No space left on device"),
], ids=["unexpected-bug", "is-a-directory", "unreadable-file", "disk-full"])
def test_unanticipated_errors_are_still_one_line(error, code, needle, monkeypatch, capsys):
    def handler(_args):
        raise error

    monkeypatch.setattr("medtransfer.cli._data_check", handler)
    clear_error(medtransfer(["data", "check", "whatever.json"], capsys), code, needle)


def test_unknown_command_is_argparse_usage_not_a_traceback(capsys):
    clear_error(medtransfer(["segmnet", "x"], capsys), 2, "invalid choice: 'segmnet'")
