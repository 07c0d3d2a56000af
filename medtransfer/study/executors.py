"""Where a study's runs execute: a local pool (each run its own process) or a Ray cluster.

Both run one bundle process per run, its output captured in the run's log.txt, so a crashing run fails alone:
the local pool forks it from a launcher that has imported torch/MONAI once (`medtransfer.study.preloaded`, saves
the ~4 s of imports per run), Ray starts it as a subprocess (`execute_command`). The study driver only decides *which* runs are ready (a fine-tune waits for its
pretraining run); placement, queues and retries across machines are the engine's business (Ray), never ours.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any, Callable

from medtransfer.study.preloaded import PreloadedLauncher, supported
from medtransfer.study.processes import (  # noqa: F401  (re-exported: the names callers knew executors by)
    TRACEBACK_LINES,
    die_with_parent,
    error_tail,
    execute_command,
    log_command,
    run_outcome,
)

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
        try:  # Ray is an optional dependency (pip install 'medtransfer[ray]'): imported only for this executor
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
