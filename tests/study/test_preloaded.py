"""Runs forked from the pre-imported launcher behave like `python -m MODULE ...` subprocesses."""

import os
import sys
from pathlib import Path

import pytest

from medtransfer.study.executors import LocalExecutor, execute_command
from medtransfer.study.preloaded import PreloadedLauncher, module_command, supported

REPO = Path(__file__).resolve().parents[2]
MODULE = "tests.study.fake_module"
pytestmark = pytest.mark.skipif(not supported(), reason="no fork on this platform")


def command(*args):
    return [sys.executable, "-m", MODULE, *args]


@pytest.fixture(scope="module")
def launcher():
    launcher = PreloadedLauncher()
    yield launcher
    launcher.close()


def test_module_command_recognises_only_this_interpreter():
    assert module_command([sys.executable, "-m", "monai.bundle", "run", "--x", "1"]) == ("monai.bundle", ["run", "--x", "1"])
    assert module_command(["/other/python", "-m", "monai.bundle"]) is None
    assert module_command([sys.executable, "script.py"]) is None


def test_output_environment_and_threads_reach_the_log(tmp_path, launcher):
    log = tmp_path / "run" / "log.txt"
    result = launcher.execute(command("a", "b c", "--where"), str(log),
                              {"FAKE_MODULE_VAR": "42", "OMP_NUM_THREADS": "1"}, str(REPO))
    text = log.read_text()
    assert result["returncode"] == 0 and "error" not in result
    assert text.startswith(f"$ {sys.executable} -m {MODULE} a b c --where\n")
    assert "argv=['a', 'b c', '--where'] name=__main__ threads=1 var=42" in text and "to stderr" in text
    assert f"parent={launcher._process.pid}" in text  # forked by the launcher
    assert "FAKE_MODULE_VAR" not in os.environ  # the driver's environment is untouched


def test_same_log_as_a_subprocess(tmp_path, launcher):
    fork_log, sub_log = tmp_path / "fork.txt", tmp_path / "sub.txt"
    env = {"FAKE_MODULE_VAR": "x", "OMP_NUM_THREADS": "2"}
    launcher.execute(command("--exit", "0"), str(fork_log), env, str(REPO))
    execute_command(command("--exit", "0"), str(sub_log), env, str(REPO))
    assert fork_log.read_text() == sub_log.read_text()


@pytest.mark.parametrize("args, code, message", [
    (("--raise",), 1, "RuntimeError: fake module failed on purpose"),
    (("--exit", "3"), 3, "to stderr"),
    (("--kill",), -9, "killed by signal 9"),
])
def test_failures_return_the_code_and_the_log_tail(tmp_path, launcher, args, code, message):
    result = launcher.execute(command(*args), str(tmp_path / "log.txt"), {}, str(REPO))
    assert result["returncode"] == code
    assert message in result["error"]


def test_concurrent_runs_each_get_their_own_status(tmp_path, launcher):
    from concurrent.futures import ThreadPoolExecutor

    codes = [0, 3, 5, 0, 7, 2]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: launcher.execute(command("--exit", str(codes[i])),
                                                           str(tmp_path / f"{i}.txt"), {}, str(REPO)), range(6)))
    assert [r["returncode"] for r in results] == codes


def test_local_executor_forks_unless_preload_is_off(tmp_path):
    for preload in (True, False):
        executor = LocalExecutor(1, preload=preload)
        try:
            log = tmp_path / f"{preload}.txt"
            handle = executor.submit(execute_command, command("--where"), str(log), {}, str(REPO))
            assert executor.result(handle)["returncode"] == 0
            parent = executor._launcher._process.pid if preload else os.getpid()
        finally:
            executor.close()
        assert "name=__main__" in log.read_text() and f"parent={parent}" in log.read_text()


def test_other_commands_fall_back_to_a_subprocess(tmp_path, launcher):
    log = tmp_path / "log.txt"
    result = launcher.execute(["sh", "-c", "echo plain; exit 4"], str(log))
    assert result["returncode"] == 4 and "plain" in log.read_text()


def test_a_dead_launcher_fails_the_run_with_a_clear_error(tmp_path):
    dead = PreloadedLauncher()
    dead._process.kill()
    dead._process.wait()
    result = dead.execute(command(), str(tmp_path / "log.txt"), {}, str(REPO))
    assert result["returncode"] is None and "launcher" in result["error"]
    dead.close()


def test_a_subprocess_killed_by_a_signal_says_so(tmp_path):
    result = execute_command(["sh", "-c", "echo started; kill -9 $$"], str(tmp_path / "log.txt"))
    assert result["returncode"] == -9 and "killed by signal 9" in result["error"] and "started" in result["error"]
