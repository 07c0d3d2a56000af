"""Start study runs in processes forked from a server that has already imported torch, MONAI and medtransfer.

Why: a study run is `python -m monai.bundle run ...`. Started as a fresh interpreter, each run spends ~4 s
importing torch, ignite, MONAI and medtransfer before its first iteration (measured on 2 cores), which for the
short runs of a low-data grid is a large share of the study. Python's `forkserver` start method keeps one
server process that imports those modules once (`set_forkserver_preload`); every run is then a `fork()` of
that server, so it starts with the imports done.

Each run is still its own process (a crash, a segfault or an exhausted memory fails that run only), runs the
same module with the same arguments as the command line it replaces (`runpy`, `__name__ == "__main__"`), and
writes stdout and stderr to the run's log at the file-descriptor level, exactly like the subprocess launch.
What differs: environment variables that torch or MONAI read *at import time* take the driver's values
(the run's own environment is applied before the module runs; `OMP_NUM_THREADS` is honoured through
`torch.set_num_threads`).
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import sys
import threading
import time
from pathlib import Path
from typing import Any

PRELOAD = ["torch", "ignite.engine", "monai.bundle", "monai.engines", "monai.handlers", "monai.transforms",
           "medtransfer.handlers", "medtransfer.data.transforms", "medtransfer.networks", "medtransfer.transfer",
           "medtransfer.pretraining"]

_lock = threading.Lock()
_context = None


def module_command(command: list[str]) -> tuple[str, list[str]] | None:
    """(module, arguments) of a `python -m MODULE ...` command run by this interpreter; None otherwise."""
    if len(command) >= 3 and command[0] == sys.executable and command[1] == "-m":
        return command[2], list(command[3:])
    return None


def forkserver_context():
    """The forkserver context with our preload list (set once, before the server starts)."""
    global _context
    with _lock:
        if _context is None:
            if "forkserver" not in multiprocessing.get_all_start_methods():
                return None  # e.g. Windows: callers fall back to plain subprocesses
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(PRELOAD)
            _context = context
        return _context


def _run_module(module: str, argv: list[str], log_path: str, env: dict[str, str], cwd: str | None) -> None:
    """Child side: redirect output to the log, apply the run's environment, run the module as __main__."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.environ.clear()
    os.environ.update(env)
    if cwd:
        os.chdir(cwd)
    sys.path.insert(0, os.getcwd())  # what `python -m` does
    threads = env.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        import torch

        torch.set_num_threads(int(threads))
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def execute_preloaded(command: list[str], log_path: str, env: dict[str, str] | None = None,
                      cwd: str | None = None) -> dict[str, Any]:
    """Like `executors.execute_command`, but a `python -m MODULE` command runs in a forked, pre-imported
    process. Other commands (or platforms without forkserver) go through `execute_command` unchanged."""
    from medtransfer.study.executors import error_tail, execute_command

    parsed = module_command(command)
    context = forkserver_context() if parsed else None
    if context is None:
        return execute_command(command, log_path, env, cwd)
    module, argv = parsed
    log = Path(log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as stream:
        stream.write(f"$ {' '.join(command)}\n".encode())
    started = time.perf_counter()
    process = context.Process(target=_run_module, args=(module, argv, str(log), {**os.environ, **(env or {})}, cwd),
                              name=f"study-run:{log.parent.name}")
    process.start()
    process.join()
    returncode = process.exitcode
    result: dict[str, Any] = {"returncode": returncode, "seconds": time.perf_counter() - started}
    if returncode != 0:
        text = log.read_text(errors="replace")
        if returncode is not None and returncode < 0:
            text += f"\nthe run's process was killed by signal {-returncode}\n"
        result["error"] = error_tail(text)
    return result
