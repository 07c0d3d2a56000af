"""Where a study's runs execute: a local pool (each run its own process) or a Ray cluster.

Both run one bundle process per run, its output captured in the run's log.txt, so a crashing run fails alone:
the local pool forks it from a launcher that has imported torch/MONAI once (`medtransfer.study.preloaded`, saves
the ~4 s of imports per run), Ray starts it as a subprocess of the run's task on the node it chose
(`medtransfer.study.cluster.run_attempt`). The study driver only decides *which* runs are ready (a fine-tune waits
for its pretraining run); placement, queues and retries across machines are the engine's business (Ray), never ours.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import Any, Callable

from medtransfer.study.cluster import ClusterError, RunResources, check_shared_storage, resolve_resources, run_attempt
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

    def submit_run(self, run, command: list[str], log_path: str, env: dict[str, str]) -> Future:
        return self.submit(execute_command, command, log_path, env, None)

    def prepare(self, study_dir: Path, spec) -> dict:
        """Nothing to check: every run writes to this machine's study folder."""
        return {}

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
    """Runs on a Ray cluster (`ray.init(address=...)`); each run is one Ray task (`cluster.run_attempt`) that
    starts one bundle subprocess on the node Ray chose.

    `resources` maps a run kind (pretrain, finetune) to its `RunResources` (Ray's num_cpus / num_gpus). A task
    lost to a system failure (its node died, its worker was killed) is retried by Ray up to `max_retries` times,
    resuming from the run's checkpoint; a run that fails by itself (the bundle exits non-zero, or the task body
    raises) is not (`retry_exceptions=False`). A run whose resources no live node offers any more fails after
    `stranded_seconds` instead of waiting forever. Run folders are on storage every node sees: `prepare` checks
    that on every node that can take a run before any run is placed.
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None,
                 resources: dict[str, RunResources] | None = None, max_retries: int = 3,
                 lock_wait_seconds: float = 600.0, stranded_seconds: float = 300.0, **init_kwargs) -> None:
        try:  # Ray is an optional dependency (pip install 'medtransfer[ray]'): imported only for this executor
            import ray
        except ImportError as error:
            raise RuntimeError("the Ray executor needs Ray: pip install 'medtransfer[ray]'") from error
        if max_retries < 0:
            raise ValueError(f"max_retries must be at least 0, got {max_retries}")
        self._ray = ray
        self._started_here = not ray.is_initialized()
        if self._started_here:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, **init_kwargs)
        self.resources = resources or resolve_resources(None)
        self.max_retries = max_retries
        self.lock_wait_seconds = lock_wait_seconds
        self.stranded_seconds = stranded_seconds
        self._workers = workers
        self._capacity: tuple[float, int] | None = None  # (when, value): the cluster is asked at most every 5 s
        self._remote = ray.remote(run_attempt)
        self._asks: dict[Any, RunResources] = {}
        self._stranded_since: dict[Any, float] = {}
        self._stranded: dict[Any, str] = {}
        for kind, ask in self.resources.items():
            if not any(ask.fits(node["Resources"]) for node in self.alive_nodes()):
                raise ClusterError(f"no node of the Ray cluster offers what a {kind} run asks ({ask.text()}); nodes: "
                                   + "; ".join(f"{n['NodeManagerAddress']} {self._offer(n)}" for n in self.alive_nodes()))

    @staticmethod
    def _offer(node: dict) -> str:
        total = node["Resources"]
        return f"{total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU"

    def alive_nodes(self) -> list[dict]:
        return [node for node in self._ray.nodes() if node.get("Alive")]

    @property
    def capacity(self) -> int:
        """Runs at once: --workers, else how many fine-tunes the live nodes hold side by side (re-read every 5 s,
        so a lost or added node changes it)."""
        if self._workers:
            return self._workers
        now = time.monotonic()
        if self._capacity is None or now - self._capacity[0] > 5.0:
            ask = self.resources["finetune"]
            self._capacity = (now, max(1, sum(ask.fits(n["Resources"]) for n in self.alive_nodes())))
        return self._capacity[1]

    def child_env(self) -> dict[str, str]:
        return {}

    def prepare(self, study_dir: Path, spec) -> dict[str, dict]:
        """The shared-storage check on every live node that can take a run (SharedStorageError names a node that
        fails it); returns the nodes that passed, by status label."""
        nodes = [node["NodeID"] for node in self.alive_nodes()
                 if any(ask.fits(node["Resources"]) for ask in self.resources.values())]
        return check_shared_storage(self._ray, study_dir, spec, nodes)

    def submit_run(self, run, command: list[str], log_path: str, env: dict[str, str]):
        ask = self.resources[run.kind]
        handle = self._remote.options(
            num_cpus=ask.cpus, num_gpus=ask.gpus, max_retries=self.max_retries, retry_exceptions=False,
            name=f"medtransfer:{run.run_id}",
        ).remote(command, log_path, env, None, run.kind, self.lock_wait_seconds)
        self._asks[handle] = ask
        return handle

    def submit(self, fn: Callable, *args):
        return self._ray.remote(num_cpus=1, max_retries=0)(fn).remote(*args)

    def _strand(self, handles: list) -> list:
        """Handles whose resources no live node has offered for `stranded_seconds` (Ray would queue them forever)."""
        asking = [h for h in handles if h in self._asks and h not in self._stranded]
        if not asking:
            return []
        nodes = self.alive_nodes()
        now = time.monotonic()
        out = []
        for handle in asking:
            ask = self._asks[handle]
            if any(ask.fits(node["Resources"]) for node in nodes):
                self._stranded_since.pop(handle, None)
                continue
            since = self._stranded_since.setdefault(handle, now)
            if now - since >= self.stranded_seconds:
                self._stranded[handle] = (
                    f"no live node of the Ray cluster has offered {ask.text()} for {self.stranded_seconds:g} s (the "
                    "nodes that could take this run are gone); rerun the study when such a node is back")
                out.append(handle)
        return out

    def wait(self, handles: list, timeout: float) -> list:
        ready, _ = self._ray.wait(list(handles), num_returns=1, timeout=timeout)
        if ready:  # collect everything else that is ready too
            more, _ = self._ray.wait(list(handles), num_returns=len(handles), timeout=0)
            ready = list(dict.fromkeys([*ready, *more]))
        stranded = self._strand([h for h in handles if h not in ready])
        return [*ready, *stranded]

    def result(self, handle) -> Any:
        self._asks.pop(handle, None)
        self._stranded_since.pop(handle, None)
        if handle in self._stranded:
            self._ray.cancel(handle, force=True)
            raise ClusterError(self._stranded.pop(handle))
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
