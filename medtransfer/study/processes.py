"""One run as one process: start it with its output in the run's log, and read back how it ended.

Both launch paths use these: a fresh subprocess (`execute_command`; the Ray executor's tasks too) and a fork
of the preloaded launcher (`medtransfer.study.preloaded`), so a run's log and outcome read the same either way,
and either way a run dies with the process that started it (`die_with_parent`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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
