"""One run as one process: start it with its output in the run's log, and read back how it ended.

Both launch paths use these: a fresh subprocess (`execute_command`; the Ray executor's tasks too) and a fork
of the preloaded launcher (`medtransfer.study.preloaded`), so a run's log and outcome read the same either way.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

TRACEBACK_LINES = 40


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
                                        cwd=cwd).returncode
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
