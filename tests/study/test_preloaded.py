"""Runs forked from the pre-imported server behave like `python -m MODULE ...` subprocesses."""

import os
import sys
from pathlib import Path

import pytest

from medtransfer.study.executors import LocalExecutor, execute_command
from medtransfer.study.preloaded import execute_preloaded, forkserver_context, module_command

REPO = Path(__file__).resolve().parents[2]
MODULE = "tests.study.fake_module"
pytestmark = pytest.mark.skipif(forkserver_context() is None, reason="no forkserver on this platform")


def command(*args):
    return [sys.executable, "-m", MODULE, *args]


def test_module_command_recognises_only_this_interpreter():
    assert module_command([sys.executable, "-m", "monai.bundle", "run", "--x", "1"]) == ("monai.bundle", ["run", "--x", "1"])
    assert module_command(["/other/python", "-m", "monai.bundle"]) is None
    assert module_command([sys.executable, "script.py"]) is None


def test_output_environment_and_threads_reach_the_log(tmp_path):
    log = tmp_path / "run" / "log.txt"
    result = execute_preloaded(command("a", "b c"), str(log), {"FAKE_MODULE_VAR": "42", "OMP_NUM_THREADS": "1"},
                               str(REPO))
    text = log.read_text()
    assert result["returncode"] == 0 and "error" not in result
    assert text.startswith(f"$ {sys.executable} -m {MODULE} a b c\n")
    assert "argv=['a', 'b c'] name=__main__ threads=1 var=42" in text and "to stderr" in text
    assert "FAKE_MODULE_VAR" not in os.environ  # the driver's environment is untouched


def test_same_log_as_a_subprocess(tmp_path):
    fork_log, sub_log = tmp_path / "fork.txt", tmp_path / "sub.txt"
    env = {"FAKE_MODULE_VAR": "x", "OMP_NUM_THREADS": "2"}
    execute_preloaded(command("--exit", "0"), str(fork_log), env, str(REPO))
    execute_command(command("--exit", "0"), str(sub_log), env, str(REPO))
    assert fork_log.read_text() == sub_log.read_text()


@pytest.mark.parametrize("args, code, message", [
    (("--raise",), 1, "RuntimeError: fake module failed on purpose"),
    (("--exit", "3"), 3, "to stderr"),
    (("--kill",), -9, "killed by signal 9"),
])
def test_failures_return_the_code_and_the_log_tail(tmp_path, args, code, message):
    result = execute_preloaded(command(*args), str(tmp_path / "log.txt"), {}, str(REPO))
    assert result["returncode"] == code
    assert message in result["error"]


def test_local_executor_uses_the_preloaded_launch_unless_disabled(tmp_path):
    for preload in (True, False):
        executor = LocalExecutor(1, preload=preload)
        try:
            log = tmp_path / f"{preload}.txt"
            handle = executor.submit(execute_command, command("--where"), str(log), {}, str(REPO))
            assert executor.result(handle)["returncode"] == 0
        finally:
            executor.close()
        assert "name=__main__" in log.read_text() and f"forked={preload}" in log.read_text()


def test_other_commands_fall_back_to_a_subprocess(tmp_path):
    log = tmp_path / "log.txt"
    result = execute_preloaded(["sh", "-c", "echo plain; exit 4"], str(log))
    assert result["returncode"] == 4 and "plain" in log.read_text()
