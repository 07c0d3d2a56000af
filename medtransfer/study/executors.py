"""Where a study's runs execute: a local pool (each run its own process) or a Ray cluster.

Both run one bundle process per run, its output captured in the run's log.txt, so a crashing run fails alone:
the local pool forks it from a launcher that has imported torch/MONAI once (`medtransfer.study.preloaded`, saves
the ~4 s of imports per run), Ray starts it as a subprocess (`execute_command`). The study driver only decides *which* runs are ready (a fine-tune waits for its
pretraining run); placement, queues and retries across machines are the engine's business (Ray), never ours.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import Any, Callable

TRACEBACK_LINES = 40
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - every Linux libc has prctl
        return None


_PRCTL = _load_prctl()  # looked up once: the child calls it between fork and exec


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """In a freshly forked child: ask the kernel to send `sig` when its parent dies (Linux PR_SET_PDEATHSIG),
    and exit at once if the parent is already gone. So a `kill -9` of the study driver takes its runs with it
    instead of leaving them training into folders that a rerun will use again. (Elsewhere the launcher's
    parent-alive check is what stops runs.)"""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def _child_setup(parent_pid: int) -> Callable[[], None]:
    return lambda: die_with_parent(parent_pid)


def error_tail(log_text: str, max_lines: int = TRACEBACK_LINES) -> str:
    """The last traceback of a log (or its last lines when there is none), at most `max_lines` lines."""
    index = log_text.rfind("Traceback (most recent call last)")
    text = log_text[index:] if index >= 0 else log_text
    lines = [line for line in text.rstrip().splitlines() if line.strip()]
    return "\n".join(lines[-max_lines:])


def execute_command(command: list[str], log_path: str, env: dict[str, str] | None = None,
                    cwd: str | None = None) -> dict[str, Any]:
    """Run one command, stdout+stderr into `log_path`; return its exit status, duration and error tail."""
    log = Path(log_path)
    log_command(log, command)
    started = time.perf_counter()
    full_env = {**os.environ, **(env or {})}
    with open(log, "ab") as stream:
        try:
            returncode = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, env=full_env,
                                        cwd=cwd, preexec_fn=_child_setup(os.getpid())).returncode
        except OSError as error:  # the command could not even start
            stream.write(f"Traceback (most recent call last)\nOSError: {error}\n".encode())
            returncode = 127
    return run_outcome(log, returncode, started)


def log_command(log: Path, command: list[str]) -> None:
    """Start a run's log with the command line it replaces (what a user re-runs by hand)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as stream:
        stream.write(f"$ {' '.join(command)}\n".encode())


def run_outcome(log: Path, returncode: int | None, started: float) -> dict[str, Any]:
    """Exit status, duration and, for a failed run, the tail of its log (a signal death named as such)."""
    result: dict[str, Any] = {"returncode": returncode, "seconds": time.perf_counter() - started}
    if returncode != 0:
        text = log.read_text(errors="replace")
        if returncode is not None and returncode < 0:
            text += f"\nthe run's process was killed by signal {-returncode}\n"
        result["error"] = error_tail(text)
    return result


class LocalExecutor:
    """A pool of `workers` threads, each waiting on one run's process.

    `preload=True` (default, where the platform can fork) starts `python -m ...` commands as forks of a
    pre-imported launcher (`medtransfer.study.preloaded`); `preload=False` starts every run as a fresh
    interpreter.
    """

    name = "local"

    def __init__(self, workers: int = 1, preload: bool = True) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.capacity = workers
        from medtransfer.study.preloaded import supported

        self.preload = preload and supported()
        self._launcher = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="study-run")

    def child_env(self) -> dict[str, str]:
        """Share the cores between concurrent runs instead of oversubscribing them."""
        if "OMP_NUM_THREADS" in os.environ:
            return {}
        return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // self.capacity))}

    def submit(self, fn: Callable, *args) -> Future:
        if fn is execute_command and self.preload:
            if self._launcher is None:
                from medtransfer.study.preloaded import PreloadedLauncher

                self._launcher = PreloadedLauncher()
            fn = self._launcher.execute
        return self._pool.submit(fn, *args)

    def wait(self, handles: list, timeout: float) -> list:
        done, _ = futures_wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, handle: Future) -> Any:
        return handle.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._launcher is not None:
            self._launcher.close()
            self._launcher = None


class RayExecutor:
    """Runs on a Ray cluster (`ray.init(address=...)`); each Ray task runs one bundle subprocess.

    Run folders are paths on a file system every node sees (the study folder must be shared storage).
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, cpus_per_run: float = 1.0,
                 **init_kwargs) -> None:
        try:
            import ray
        except ImportError as error:
            raise RuntimeError("the Ray executor needs Ray: pip install 'medtransfer[ray]'") from error
        self._ray = ray
        self._started_here = not ray.is_initialized()
        if self._started_here:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, **init_kwargs)
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        self.capacity = workers or max(1, int(cluster_cpus // cpus_per_run))
        self._remote = ray.remote(num_cpus=cpus_per_run, max_retries=0)(execute_command)

    def child_env(self) -> dict[str, str]:
        return {}

    def submit(self, fn: Callable, *args):
        if fn is not execute_command:
            return self._ray.remote(num_cpus=1, max_retries=0)(fn).remote(*args)
        return self._remote.remote(*args)

    def wait(self, handles: list, timeout: float) -> list:
        ready, _ = self._ray.wait(list(handles), num_returns=1, timeout=timeout)
        if ready:  # collect everything else that is ready too
            more, _ = self._ray.wait(list(handles), num_returns=len(handles), timeout=0)
            ready = list(dict.fromkeys([*ready, *more]))
        return ready

    def result(self, handle) -> Any:
        return self._ray.get(handle)

    def close(self) -> None:
        if self._started_here:
            self._ray.shutdown()


def make_executor(kind: str = "local", workers: int | None = None, address: str | None = None, **kwargs):
    if kind == "local":
        return LocalExecutor(workers or 1, **kwargs)
    if kind == "ray":
        return RayExecutor(address=address, workers=workers, **kwargs)
    raise ValueError(f"unknown executor {kind!r}; one of local, ray")
