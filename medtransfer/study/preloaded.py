"""Start study runs as forks of a launcher process that has already imported torch, MONAI and medtransfer.

Why: a study run is `python -m monai.bundle run ...`. Started as a fresh interpreter, each run spends ~4 s
importing torch, ignite, MONAI and medtransfer before its first iteration (measured on 2 cores), a large share
of the short runs of a low-data grid. The launcher (`python -m medtransfer.study.preloaded`, one per local
executor) imports those modules once, then `fork()`s one child per run, so every run starts with the imports
done.

Each run is still its own process (a crash, a segfault or exhausted memory fails that run only), runs the
same module with the same arguments as the command line it replaces (`runpy`, `__name__ == "__main__"`,
`sys.path[0]` = its working directory) and writes stdout and stderr to the run's log at the file-descriptor
level, like the subprocess launch. What differs: environment variables that torch or MONAI read *at import
time* take the launcher's values (the run's environment is applied before its module runs; `OMP_NUM_THREADS`
is honoured through `torch.set_num_threads`), and the preloaded modules are the versions the launcher imported
when the study started (edit medtransfer during a study and later runs still use the code in memory).

Why not `multiprocessing`'s forkserver: it re-imports the driver's `__main__` script in every child, which
breaks (or re-runs) any user script that calls `run_study` without an `if __name__ == "__main__":` guard.
The launcher is single-threaded (it forks only from its main loop: no lock can be held by another thread at
fork time) and talks to the driver over its stdin/stdout, one JSON line per request and per exit status.

Nothing outlives the driver: the launcher and every run it forks get a parent-death signal (SIGKILL, Linux
``PR_SET_PDEATHSIG``), and the launcher also checks that its driver is alive (``getppid``) while it waits,
killing its runs when the driver is gone. Without this a ``kill -9`` of ``medtransfer study run`` left runs
training, and a rerun trained the same run a second time into the same folder.
"""

from __future__ import annotations

import atexit
import importlib
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from medtransfer.study.processes import _child_setup, die_with_parent, execute_command, log_command, run_outcome

PRELOAD = ["torch", "ignite.engine", "monai.bundle", "monai.engines", "monai.handlers", "monai.transforms",
           "medtransfer.handlers", "medtransfer.data.transforms", "medtransfer.networks", "medtransfer.transfer",
           "medtransfer.pretraining"]


def module_command(command: list[str]) -> tuple[str, list[str]] | None:
    """(module, arguments) of a `python -m MODULE ...` command run by this interpreter; None otherwise."""
    if len(command) >= 3 and command[0] == sys.executable and command[1] == "-m":
        return command[2], list(command[3:])
    return None


# Launcher side (its own process) ----------------------------------------------------------------------------
def _run_child(request: dict, launcher_pid: int) -> None:
    """In the forked child: redirect output to the log, apply the run's environment, run the module as
    __main__, exit with its status. Never returns."""
    code = 1
    try:
        die_with_parent(launcher_pid)
        fd = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # the launcher's request pipe is not the run's stdin
        os.close(null)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.environ.clear()
        os.environ.update(request["env"])
        if request.get("cwd"):
            os.chdir(request["cwd"])
        sys.path.insert(0, os.getcwd())  # what `python -m` does
        threads = request["env"].get("OMP_NUM_THREADS", "")
        if threads.isdigit():
            import torch

            torch.set_num_threads(int(threads))
        import runpy

        sys.argv = [request["module"], *request["argv"]]
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_request:  # sys.exit(...) in the run, as the interpreter would handle it
        if exit_request.code is None or isinstance(exit_request.code, int):
            code = exit_request.code or 0
        else:
            print(exit_request.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()  # what a normal interpreter exit runs (log and event-file flushes)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _kill_children(children: dict) -> None:
    for pid in list(children):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def serve() -> None:
    """The launcher's loop: import PRELOAD, then fork one child per request line, report each exit status."""
    driver = int(os.environ.get("MEDTRANSFER_LAUNCHER_PARENT", os.getppid()))
    die_with_parent(driver)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as error:  # the run will import (and fail on) it itself, with its own log
            print(f"medtransfer launcher: could not preload {name}: {error}", file=sys.stderr, flush=True)
    requests, results = sys.stdin.fileno(), sys.stdout
    buffer, open_input, children = b"", True, {}
    launcher = os.getpid()
    while open_input or children:
        if open_input:
            readable, _, _ = select.select([requests], [], [], 0.05)
            if readable:
                chunk = os.read(requests, 65536)
                open_input = bool(chunk)
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    request = json.loads(line)
                    pid = os.fork()
                    if pid == 0:
                        _run_child(request, launcher)
                    children[pid] = request["id"]
        else:
            time.sleep(0.05)
        if os.getppid() != driver:  # the driver is gone (where no parent-death signal exists): stop its runs
            _kill_children(children)
            os._exit(1)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            results.write(json.dumps({"id": children.pop(pid), "returncode": os.waitstatus_to_exitcode(status)})
                          + "\n")
            results.flush()


# Driver side ------------------------------------------------------------------------------------------------
class PreloadedLauncher:
    """Driver's handle on one launcher process; `execute` has `processes.execute_command`'s signature and is
    safe to call from several threads at once."""

    def __init__(self) -> None:
        self._log = tempfile.NamedTemporaryFile(prefix="medtransfer-launcher-", suffix=".log", delete=False)
        self._process = subprocess.Popen([sys.executable, "-m", "medtransfer.study.preloaded"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._log, cwd=str(Path.cwd()),
                                         env={**os.environ, "MEDTRANSFER_LAUNCHER_PARENT": str(os.getpid())},
                                         preexec_fn=_child_setup(os.getpid()))
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._pending: dict[int, Future] = {}
        self._reader = threading.Thread(target=self._read_results, name="launcher-results", daemon=True)
        self._reader.start()

    def _read_results(self) -> None:
        for line in self._process.stdout:
            message = json.loads(line)
            with self._lock:
                future = self._pending.pop(message["id"], None)
            if future is not None:
                future.set_result(message["returncode"])
        self._process.wait()
        with self._lock:  # the launcher is gone: nothing more will be reported
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(RuntimeError(f"the run launcher exited (status {self._process.returncode}); "
                                              f"its log: {self._log.name}"))

    def run(self, module: str, argv: list[str], log_path: str, env: dict[str, str], cwd: str | None) -> int | None:
        future: Future = Future()
        request = {"module": module, "argv": argv, "log": str(log_path), "env": env, "cwd": cwd}
        with self._lock:
            request["id"] = next(self._ids)
            self._pending[request["id"]] = future
            try:
                self._process.stdin.write((json.dumps(request) + "\n").encode())
                self._process.stdin.flush()
            except OSError as error:
                self._pending.pop(request["id"])
                raise RuntimeError(f"the run launcher is not running ({error}); its log: {self._log.name}") from None
        return future.result()

    def execute(self, command: list[str], log_path: str, env: dict[str, str] | None = None,
                cwd: str | None = None) -> dict[str, Any]:
        """Run one command like `execute_command`; `python -m MODULE` commands are forked from the launcher."""
        parsed = module_command(command)
        if parsed is None:
            return execute_command(command, log_path, env, cwd)
        log = Path(log_path)
        log_command(log, command)
        started = time.perf_counter()
        try:
            returncode = self.run(*parsed, str(log), {**os.environ, **(env or {})}, cwd)
        except RuntimeError as error:
            return {"returncode": None, "seconds": time.perf_counter() - started, "error": str(error)}
        return run_outcome(log, returncode, started)

    def close(self) -> None:
        """Ask the launcher to stop (it waits for running children) and wait for it."""
        try:
            self._process.stdin.close()
        except OSError:
            pass
        self._process.wait()
        self._reader.join(timeout=5)
        self._log.close()
        if self._process.returncode == 0:
            os.unlink(self._log.name)


def supported() -> bool:
    return hasattr(os, "fork") and sys.platform != "win32"


if __name__ == "__main__":
    serve()
