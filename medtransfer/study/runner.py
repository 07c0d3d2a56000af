"""Execute a study: skip finished runs, (re)start the others, record status, then write the report.

The study folder's layout is described in medtransfer.study.folder. A run is finished when its run.json says
so *and* its weights match the recorded sha256 (model.pt for fine-tunes, pretrained.pt for pretraining).
Anything else is re-run with the same command; the bundle resumes from its checkpoint.pt by itself.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from medtransfer.atomic import save_json
from medtransfer.folder_lock import LOCK_NAME, FolderLock
from medtransfer.study.analysis import run_cka_analysis
from medtransfer.study.cluster import node_summary, placement_fields, resolve_resources
from medtransfer.study.executors import make_executor
from medtransfer.study.folder import (  # noqa: F401  (re-exported: the names callers knew runner by)
    LOG_NAME,
    RUNS,
    STATUS_FILE,
    STUDY_RECORD,
    finished_record,
    load_study_dir,
    read_json,
    run_dir,
)
from medtransfer.study.report import write_report
from medtransfer.study.spec import Run, StudyError, StudySpec, bundle_command, load_study
from medtransfer.training.run_folder import RunFolder

logger = logging.getLogger("medtransfer.study")

_EPOCH = re.compile(rb"medtransfer: epoch (\d+)/\d+ done")


def current_epoch(log_path: Path, tail_bytes: int = 16384) -> int | None:
    """The last epoch a run's log reports (RunRecord prints 'medtransfer: epoch N/M done' once per epoch)."""
    try:
        with open(log_path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(0, stream.tell() - tail_bytes))
            matches = _EPOCH.findall(stream.read())
    except OSError:
        return None
    return int(matches[-1]) if matches else None


def open_study_dir(spec: StudySpec, study_dir: str | Path, allow_changed: bool = False) -> Path:
    """Create or re-open a study folder; refuse one made by a different study file."""
    study_dir = Path(study_dir)
    record_path = study_dir / STUDY_RECORD
    previous = read_json(record_path) if record_path.exists() else None
    if record_path.exists() and previous is None:
        raise StudyError(f"{record_path} is unreadable; this folder cannot be checked against the study file")
    if previous and previous.get("content_hash") != spec.content_hash and not allow_changed:
        raise StudyError(
            f"{study_dir} belongs to another study file ({previous.get('name')!r} from {previous.get('study_file')}, "
            f"content hash {previous.get('content_hash')} ≠ {spec.content_hash}). Choose another --study-dir, or pass "
            "--allow-changed to adopt the new file here (runs whose configuration is unchanged keep their ids and "
            "results; the report then covers the new grid only)."
        )
    if not previous and study_dir.is_dir() and any(p.name != LOCK_NAME for p in study_dir.iterdir()):
        raise StudyError(f"{study_dir} exists, is not empty and holds no {STUDY_RECORD}; choose an empty folder")
    study_dir.mkdir(parents=True, exist_ok=True)
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    history = (previous or {}).get("history", [])
    if previous and previous.get("content_hash") != spec.content_hash:
        history = [*history, {"content_hash": previous.get("content_hash"), "replaced_at": now}]
    save_json(record_path, {
        "name": spec.name,
        "study_file": spec.source_file,
        "content_hash": spec.content_hash,
        "content": spec.content,
        "data_roots": {name: info.data_root for name, info in spec.manifests.items()},
        "created_at": (previous or {}).get("created_at", now),
        "updated_at": now,
        "history": history,
        **({"trusted": True} if spec.trusted else {}),
    })
    return study_dir


def lock_study_dir(study_dir: str | Path) -> FolderLock:
    """The study folder's exclusive lock (held while a driver writes it); refuses a foreign non-empty folder
    before putting a lock file into it."""
    study_dir = Path(study_dir)
    if study_dir.is_dir() and not (study_dir / STUDY_RECORD).exists() \
            and any(p.name != LOCK_NAME for p in study_dir.iterdir()):
        raise StudyError(f"{study_dir} exists, is not empty and holds no {STUDY_RECORD}; choose an empty folder")
    return FolderLock(study_dir, "study folder").acquire()


def check_inside(study_dir: Path, runs: list[Run]) -> None:
    """Every run folder resolves inside the study folder (names are slugs; this is the second line of defence)."""
    root = Path(study_dir).resolve()
    for run in runs:
        folder = run_dir(study_dir, run).resolve()
        if root not in folder.parents:
            raise StudyError(f"run {run.run_id!r} would be written to {folder}, outside the study folder {root}")


# Status ---------------------------------------------------------------------------------------------------
def _run_entry(run: Run) -> dict:
    return {"kind": run.kind, "objective": run.objective, "strategy": run.strategy, "fraction": run.fraction,
            "seed": run.seed, "depends_on": run.depends_on, "state": "pending"}


def _counts(entries: dict) -> dict:
    counts = {state: 0 for state in ("finished", "running", "failed", "skipped", "pending")}
    for entry in entries.values():
        counts[entry["state"]] = counts.get(entry["state"], 0) + 1
    return counts


def _pid_alive(pid: int | None, host: str | None) -> bool:
    if not pid or host != socket.gethostname():
        return host is not None and host != socket.gethostname()  # another machine: cannot tell, assume alive
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def study_status(study_dir: str | Path) -> dict:
    """status.json, checked against the folders: finished runs re-verified, the epoch of running runs, and
    'running' runs of a driver that is gone reported as 'interrupted'."""
    study_dir = Path(study_dir)
    spec = load_study_dir(study_dir)
    status = read_json(study_dir / STATUS_FILE) or {"runs": {}}
    driver = status.get("driver") or {}
    alive = status.get("active", False) and _pid_alive(driver.get("pid"), driver.get("host"))
    entries = {}
    for run in spec.expand():
        entry = {**_run_entry(run), **(status["runs"].get(run.run_id) or {})}
        folder = run_dir(study_dir, run)
        entry.update(placement_fields(folder))  # node, resources, attempts (runs placed by Ray)
        if finished_record(run, folder) is not None:
            entry["state"] = "finished"
        elif entry["state"] == "finished":  # weights changed or removed since
            entry["state"] = "pending"
            entry["note"] = "run.json or weights no longer verify; will be re-run"
        elif entry["state"] == "running":
            if alive:
                entry["epoch"] = current_epoch(folder / LOG_NAME)
                entry["max_epochs"] = run.max_epochs
            else:
                entry["state"] = "interrupted"
        entries[run.run_id] = entry
    return {"study": spec.name, "study_dir": str(study_dir), "active": alive, "counts": _counts(entries),
            "nodes": node_summary(entries), "driver": driver, "runs": entries}


# Running --------------------------------------------------------------------------------------------------
def start_order(runs: list[Run]) -> list[Run]:
    """The order in which pending runs are started: pretrainings first (every fine-tune of theirs waits on them),
    then the fine-tunes seed by seed, each seed across the whole grid in grid order. A study stopped part-way (a
    session that ends, a budget spent) then holds complete paired seeds across its arms (seed 0 of every arm,
    then seed 1 ...), which the paired tests can use, rather than every seed of the first arm and none of the
    last."""
    return sorted(runs, key=lambda run: (run.kind != "pretrain", run.seed if run.kind != "pretrain" else 0))


class StudyRunner:
    """Runs the not-yet-finished runs of a study on an executor, in dependency order, with a progress bar."""

    def __init__(self, spec: StudySpec, study_dir: str | Path, executor=None, progress: bool = True,
                 command_factory: Callable[..., list[str]] = bundle_command, poll_seconds: float = 1.0) -> None:
        self.spec = spec
        self.study_dir = Path(study_dir)
        self.executor = executor or make_executor("local", 1)
        self.progress = progress
        self.command_factory = command_factory
        self.poll_seconds = poll_seconds
        self.runs = spec.expand()
        check_inside(self.study_dir, self.runs)
        self.by_id = {run.run_id: run for run in self.runs}
        self.entries: dict[str, dict] = {}
        self.nodes: dict[str, dict] = {}  # nodes that passed the shared-storage check (Ray), by status label
        self.started = time.time()

    def _save_status(self, active: bool = True) -> None:
        save_json(self.study_dir / STATUS_FILE, {
            "study": self.spec.name,
            "content_hash": self.spec.content_hash,
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "active": active,
            "driver": {"pid": os.getpid(), "host": socket.gethostname(), "executor": self.executor.name,
                       "capacity": self.executor.capacity,
                       "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started))},
            "counts": _counts(self.entries),
            "nodes": node_summary(self.entries),
            "runs": self.entries,
        })

    def _command(self, run: Run) -> tuple[list[str], bool]:
        folder = run_dir(self.study_dir, run)
        record = RunFolder(folder).record
        overwrite = bool(record and record.get("status") == "finished")  # finished, but weights do not verify
        source = (run_dir(self.study_dir, run.depends_on) / run.source_file if run.depends_on
                  else Path(run.checkpoint_path) if run.checkpoint_path else None)
        return self.command_factory(run, self.spec.bundle_root, folder, source_checkpoint=source,
                                    overwrite=overwrite), overwrite

    def run(self) -> dict[str, Any]:
        previous = (read_json(self.study_dir / STATUS_FILE) or {}).get("runs", {})
        pending: list[Run] = []
        for run in self.runs:
            entry = {**_run_entry(run), **{k: v for k, v in (previous.get(run.run_id) or {}).items()
                                             if k in ("seconds", "started_at", "finished_at", "attempts")}}
            entry.update(placement_fields(run_dir(self.study_dir, run)))
            if finished_record(run, run_dir(self.study_dir, run)) is not None:
                entry["state"] = "finished"
            else:
                pending.append(run)
            self.entries[run.run_id] = entry
        skipped_at_start = len(self.runs) - len(pending)
        pending = start_order(pending)
        if pending:  # a cluster proves that every node sees the study folder and the data before any run is placed
            self.nodes = self.executor.prepare(self.study_dir, self.spec)
        self._save_status()
        bar = tqdm(total=len(self.runs), initial=skipped_at_start, desc=f"study {self.spec.name}", unit="run",
                   disable=not self.progress, dynamic_ncols=True)
        in_flight: dict[Any, Run] = {}
        order: list[str] = []  # running ids in start order, for the progress postfix
        env = self.executor.child_env()
        try:
            while pending or in_flight:
                for run in list(pending):
                    dep_state = self.entries[run.depends_on]["state"] if run.depends_on else "finished"
                    if dep_state in ("failed", "skipped"):
                        pending.remove(run)
                        self.entries[run.run_id].update(
                            state="skipped", error=f"pretraining run {run.depends_on} {dep_state}")
                        bar.update(1)
                    elif dep_state == "finished" and len(in_flight) < self.executor.capacity:
                        pending.remove(run)
                        command, overwrite = self._command(run)
                        log = run_dir(self.study_dir, run) / LOG_NAME
                        handle = self.executor.submit_run(run, command, str(log), env)
                        in_flight[handle] = run
                        order.append(run.run_id)
                        entry = self.entries[run.run_id]
                        entry.update(state="running", started_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                                     attempts=int(entry.get("attempts", 0)) + 1, log=str(log), overwrite=overwrite)
                        entry.pop("error", None)
                        entry.pop("returncode", None)
                self._save_status()
                if not in_flight:
                    if pending:  # cannot happen with a valid expansion; never spin
                        raise RuntimeError(f"runs waiting on unknown runs: {[r.run_id for r in pending]}")
                    break
                done = self.executor.wait(list(in_flight), timeout=self.poll_seconds)
                for handle in done:
                    run = in_flight.pop(handle)
                    order.remove(run.run_id)
                    self._finish(run, handle)
                    bar.update(1)
                if order:
                    current = self.by_id[order[-1]]
                    epoch = current_epoch(run_dir(self.study_dir, current) / LOG_NAME)
                    total = current.max_epochs or "?"
                    more = f" (+{len(order) - 1} running)" if len(order) > 1 else ""
                    bar.set_postfix_str(f"{current.run_id} epoch {epoch or 0}/{total}{more}", refresh=True)
        finally:
            bar.close()
            for handle, run in in_flight.items():  # interrupted: those runs resume next time
                self.entries[run.run_id]["state"] = "pending"
            self._save_status(active=False)
        seconds = time.time() - self.started
        counts = _counts(self.entries)
        return {"study_dir": str(self.study_dir), "counts": counts, "seconds": seconds,
                "already_finished": skipped_at_start}

    def _finish(self, run: Run, handle) -> None:
        entry = self.entries[run.run_id]
        try:
            result = self.executor.result(handle)
        except Exception as error:  # the engine lost the task (node died, ...)
            result = {"returncode": None, "seconds": None, "error": f"{type(error).__name__}: {error}"}
        entry.update(finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"), seconds=result.get("seconds"),
                     returncode=result.get("returncode"))
        entry.update(placement_fields(run_dir(self.study_dir, run)))  # where it ran, how often it was tried
        if result.get("already_finished"):  # an attempt after the node died between the run's end and its reply
            entry["note"] = "finished by an earlier attempt; not trained again"
        if result.get("returncode") == 0 and finished_record(run, run_dir(self.study_dir, run)) is not None:
            entry["state"] = "finished"
        else:
            entry["state"] = "failed"
            entry["error"] = result.get("error") or (
                "the run exited with status 0 but its run.json is not finished or its weights do not verify")
            logger.warning("run %s failed:\n%s", run.run_id, entry["error"])


def run_study(study_file: str | Path, study_dir: str | Path | None = None, data_root: str | None = None,
              executor: str = "local", workers: int | None = None, address: str | None = None,
              allow_changed: bool = False, progress: bool = True, report: bool = True,
              command_factory: Callable[..., list[str]] = bundle_command, preload: bool = True,
              trusted: bool = False, cpus_per_run: float | None = None, gpus_per_run: float | None = None,
              max_retries: int = 3) -> dict[str, Any]:
    """Validate, run what is not finished, write the report. Returns counts, seconds and the study folder.

    `preload` (local executor): fork runs from a pre-imported server instead of starting fresh interpreters.
    `trusted`: allow study settings that are MONAI expressions (they run as code in every run).
    `cpus_per_run`, `gpus_per_run` (Ray executor): what every run asks of a node, over the study file's
    `resources`; `max_retries`: attempts after a system failure (a lost node), each resuming from the checkpoint."""
    spec = load_study(study_file, data_root=data_root, trusted=trusted)  # input errors surface here, before training
    if executor == "ray":
        try:
            engine_options = {"resources": resolve_resources(spec.resources, cpus_per_run, gpus_per_run),
                              "max_retries": max_retries}
        except ValueError as error:
            raise StudyError(str(error)) from None
    elif cpus_per_run is not None or gpus_per_run is not None:
        raise StudyError("--cpus-per-run and --gpus-per-run place runs on a Ray cluster: add --executor ray")
    else:
        engine_options = {"preload": preload}
    from medtransfer.study.leakage import check_study_leakage

    leakage = check_study_leakage(spec)  # refuses stages that see target test images or target labels
    study_dir = Path(study_dir or Path("runs") / "studies" / spec.name)
    lock = lock_study_dir(study_dir)  # a second driver on this folder stops here
    try:
        return _run_locked(spec, study_dir, executor, workers, address, allow_changed, progress, report,
                           command_factory, engine_options, leakage)
    finally:
        lock.release()


def _run_locked(spec: StudySpec, study_dir: Path, executor: str, workers: int | None, address: str | None,
                allow_changed: bool, progress: bool, report: bool, command_factory: Callable[..., list[str]],
                engine_options: dict, leakage) -> dict[str, Any]:
    from medtransfer.study.leakage import save_leakage

    open_study_dir(spec, study_dir, allow_changed=allow_changed)
    save_leakage(study_dir, leakage, spec.checkpoint_sources)
    engine = make_executor(executor, workers, address, **engine_options)
    try:
        outcome = StudyRunner(spec, study_dir, engine, progress=progress, command_factory=command_factory).run()
    finally:
        engine.close()
    if spec.analysis.get("cka"):
        started = time.perf_counter()
        outcome["cka"] = run_cka_analysis(study_dir, spec, progress=progress)
        outcome["cka_seconds"] = time.perf_counter() - started
    if report:
        started = time.perf_counter()
        outcome["report"] = write_report(study_dir, spec)
        outcome["report_seconds"] = time.perf_counter() - started
    return outcome
