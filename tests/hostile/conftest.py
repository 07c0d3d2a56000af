"""Hostile-input suite: helpers that run `medtransfer` in-process and check what a user (or attacker) would see.

Every case asserts the exit code, that the message names the problem, that no traceback is printed, and that
nothing outside the folder the command may write was created or changed (`guard`: a hash of every file under
the test's folder and the working directory, before and after). The table printed at the end counts the cases
per command.
"""

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from medtransfer import cli

_OUTCOMES: Counter = Counter()


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def medtransfer(argv: list[str], capsys) -> Result:
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit_request:  # argparse refusals
        code = exit_request.code
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def clear_error(result: Result, code: int, *needles: str) -> None:
    """Exit status `code`, one-line message(s) holding every needle, no Python traceback."""
    assert "Traceback" not in result.text, result.text
    assert result.code == code, result.text
    for needle in needles:
        assert needle in result.text, f"{needle!r} not in:\n{result.text}"


def folder_hashes(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    hashes = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
            path = here / name
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest() if not path.is_symlink() else \
                    f"link:{os.readlink(path)}"
            except OSError:
                digest = "unreadable"
            hashes[str(path.relative_to(root))] = digest
        hashes.update({str((here / d).relative_to(root)) + "/": "dir" for d in dirnames})
    return hashes


class Guard:
    """Snapshot of `root` (minus the allowed output folders); `check()` asserts nothing else changed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.allowed: list[Path] = []
        self.before: dict[str, str] | None = None

    def allow(self, *paths: Path) -> "Guard":
        self.allowed += [Path(p) for p in paths]
        return self

    def snapshot(self) -> "Guard":
        self.before = folder_hashes(self.root, tuple(self.allowed))
        return self

    def check(self) -> None:
        after = folder_hashes(self.root, tuple(self.allowed))
        changed = {k for k in set(after) | set(self.before) if after.get(k) != self.before.get(k)}
        assert not changed, f"created or changed outside the intended folder: {sorted(changed)}"


@pytest.fixture()
def guard(tmp_path, monkeypatch):
    """The test's folder and working directory are hashed at `guard.snapshot()` and checked after the test."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    guard = Guard(tmp_path)
    yield guard
    if guard.before is not None:
        guard.check()


@pytest.fixture(scope="session", autouse=True)
def hostile_home(tmp_path_factory):
    """One MEDTRANSFER_HOME for the suite (outside every guarded folder)."""
    home = tmp_path_factory.mktemp("hostile_home")
    previous = os.environ.get("MEDTRANSFER_HOME")
    os.environ["MEDTRANSFER_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("MEDTRANSFER_HOME", None)
    else:
        os.environ["MEDTRANSFER_HOME"] = previous


def pytest_runtest_logreport(report):
    if report.when == "call" and "tests/hostile/" in report.nodeid.replace("\\", "/"):
        command = Path(report.nodeid.split("::")[0]).stem.removeprefix("test_")
        _OUTCOMES[(command, report.outcome)] += 1


def pytest_terminal_summary(terminalreporter):
    if not _OUTCOMES:
        return
    commands = sorted({command for command, _ in _OUTCOMES})
    terminalreporter.write_line("hostile-input cases by command (passed = clear error, nothing else touched):")
    for command in commands:
        passed, failed = _OUTCOMES[(command, "passed")], _OUTCOMES[(command, "failed")]
        terminalreporter.write_line(f"  {command:<14} cases {passed + failed:>3}  passed {passed:>3}  failed {failed:>3}")
