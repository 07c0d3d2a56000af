"""A study on a Ray cluster: what a run asks of a node, one run attempt on a node, and the shared-storage check.

Ray places, queues and retries the runs (`RayExecutor` in medtransfer.study.executors); this module holds what
runs *on* the nodes and what the driver checks before it places anything:

- `RunResources` and the study file's ``resources`` key: CPUs and GPUs per pretraining / per fine-tune.
- `run_attempt`, the body of every run's Ray task. It takes the run folder's lock (waiting while an earlier
  attempt of the same run still holds it: a driver that restarted, a node that is dying), returns at once when
  the run is already finished (a retry after the node died between the run's end and its reply), records the
  attempt (node, resources, GPUs) in the run folder's `attempts.json`, and starts the bundle with
  ``CUDA_VISIBLE_DEVICES`` set to the GPUs Ray assigned ("" when it asked for none), so `cuda` inside the run
  is the assigned device, never GPU 0 by habit. A retry resumes from the run's checkpoint.pt (RunDirectory).
- `check_shared_storage`: each node that can take a run writes a token into the study folder and reads the
  driver's; it also finds the manifests, the bundle and every data root's files as the driver sees them.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtransfer.atomic import save_json
from medtransfer.errors import FolderInUseError, MedtransferError
from medtransfer.folder_lock import FolderLock

ATTEMPTS_NAME = "attempts.json"  # in a run folder: one entry per attempt of the run on a node
STORAGE_CHECK_DIR = ".storage-check"  # in the study folder, while the check runs
# The study file's `resources` key names the stages as the study file does; runs call them pretrain/finetune.
RESOURCE_STAGES = {"pretraining": "pretrain", "finetune": "finetune"}
DATA_SAMPLE = 8  # files per data root whose sizes every node must see alike


class ClusterError(MedtransferError, RuntimeError):
    """The cluster cannot run the study as asked (no node fits a run, a run lost every node that could take it)."""


class SharedStorageError(ClusterError):
    """A node does not see the study folder, the data or the bundle as the driver does; names the node."""


@dataclass(frozen=True)
class RunResources:
    """What one run asks of a node: Ray's num_cpus and num_gpus (fractions allowed, as in Ray)."""

    cpus: float = 1.0
    gpus: float = 0.0

    def fits(self, node_resources: dict[str, float]) -> int:
        """How many such runs one node with `node_resources` (Ray's totals) holds at once."""
        counts = [int(node_resources.get("CPU", 0.0) // self.cpus)] if self.cpus > 0 else []
        if self.gpus > 0:
            counts.append(int(node_resources.get("GPU", 0.0) // self.gpus))
        return min(counts) if counts else 1 << 20

    def as_dict(self) -> dict[str, float]:
        return {"cpus": self.cpus, "gpus": self.gpus}

    def text(self) -> str:
        return f"{self.cpus:g} CPU" + (f", {self.gpus:g} GPU" if self.gpus else "")


def _amount(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{where}: a number ≥ 0, got {value!r}")
    return float(value)


def parse_resources(raw: Any, where: str = "resources") -> dict[str, dict[str, float]]:
    """The study file's ``resources: {pretraining: {cpus, gpus}, finetune: {cpus, gpus}}`` (both optional), as
    {run kind: {"cpus": .., "gpus": ..}}; raises ValueError naming the key. Only the Ray executor reads it."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a mapping with pretraining and/or finetune, got {type(raw).__name__}")
    unknown = set(raw) - set(RESOURCE_STAGES)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; allowed: pretraining, finetune")
    parsed = {}
    for stage, amounts in raw.items():
        if not isinstance(amounts, dict) or set(amounts) - {"cpus", "gpus"}:
            raise ValueError(f"{where}.{stage}: a mapping with cpus and/or gpus, got {amounts!r}")
        resources = {key: _amount(amounts[key], f"{where}.{stage}.{key}") for key in ("cpus", "gpus") if key in amounts}
        if resources.get("cpus", 1.0) == 0 and resources.get("gpus", 0.0) == 0:
            raise ValueError(f"{where}.{stage}: a run must ask for at least some CPU or GPU")
        parsed[RESOURCE_STAGES[stage]] = resources
    return parsed


def resolve_resources(study_resources: dict[str, dict[str, float]] | None, cpus_per_run: float | None = None,
                      gpus_per_run: float | None = None) -> dict[str, RunResources]:
    """Per run kind: the command line's --cpus-per-run / --gpus-per-run where given (for every run), else the
    study file's `resources`, else 1 CPU and no GPU."""
    resolved = {}
    for kind in RESOURCE_STAGES.values():
        amounts = {"cpus": 1.0, "gpus": 0.0, **(study_resources or {}).get(kind, {})}
        if cpus_per_run is not None:
            amounts["cpus"] = _amount(cpus_per_run, "--cpus-per-run")
        if gpus_per_run is not None:
            amounts["gpus"] = _amount(gpus_per_run, "--gpus-per-run")
        if amounts["cpus"] == 0 and amounts["gpus"] == 0:
            raise ValueError(f"{kind} runs would ask for no CPU and no GPU; give --cpus-per-run or --gpus-per-run")
        resolved[kind] = RunResources(amounts["cpus"], amounts["gpus"])
    return resolved


# Attempts ---------------------------------------------------------------------------------------------------
def read_attempts(run_folder: str | Path) -> list[dict]:
    """The run's attempts on cluster nodes (oldest first); [] for a run never placed by Ray."""
    import json

    try:
        attempts = json.loads((Path(run_folder) / ATTEMPTS_NAME).read_text())
    except (OSError, ValueError):
        return []
    return attempts if isinstance(attempts, list) else []


def node_label(info: dict) -> str:
    """How status names a node: its IP and the start of its Ray node id (several raylets may share an IP)."""
    return f"{info.get('node_ip') or info.get('host') or '?'}/{str(info.get('node_id') or '')[:8]}"


def this_node() -> dict[str, str]:
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "host": socket.gethostname()}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def wait_for_folder(folder: Path, wait_seconds: float, poll_seconds: float = 0.5) -> float:
    """Take and drop the run folder's lock, waiting while another process holds it (an earlier attempt of this
    run that is still being stopped); returns the seconds waited. Raises FolderInUseError after `wait_seconds`."""
    started = time.monotonic()
    while True:
        try:
            FolderLock(folder, "run folder").acquire().release()
            return time.monotonic() - started
        except FolderInUseError as error:
            if time.monotonic() - started >= wait_seconds:
                raise FolderInUseError(f"{error} (waited {wait_seconds:g} s on node {socket.gethostname()})") from None
            time.sleep(poll_seconds)


def log_line(log: Path, text: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as stream:
        stream.write(f"{text}\n".encode())


def run_attempt(command: list[str], log_path: str, env: dict[str, str] | None, cwd: str | None, kind: str,
                lock_wait_seconds: float = 600.0) -> dict[str, Any]:
    """One attempt of one run, on the node Ray chose (the body of the run's Ray task). Returns execute_command's
    outcome plus `placement` (this attempt) and `attempts` (how many attempts the run folder has seen)."""
    import ray

    from medtransfer.study.processes import execute_command
    from medtransfer.training.run_folder import RunFolder

    folder = Path(log_path).parent
    context = ray.get_runtime_context()
    gpu_ids = [str(gpu) for gpu in ray.get_gpu_ids()]
    placement = {**this_node(), "gpu_ids": gpu_ids, "resources": context.get_assigned_resources(),
                 "pid": os.getpid(), "started_at": _now()}
    waited = wait_for_folder(folder, lock_wait_seconds)
    if waited > 1.0:
        placement["waited_for_lock_seconds"] = round(waited, 1)
    attempts = read_attempts(folder)
    if RunFolder(folder).finished(kind) is not None:  # finished by an earlier attempt whose reply was lost
        return {"returncode": 0, "seconds": 0.0, "already_finished": True, "placement": placement,
                "attempts": len(attempts)}
    placement["attempt"] = len(attempts) + 1
    attempts.append(placement)
    save_json(folder / ATTEMPTS_NAME, attempts)
    # The run sees exactly the GPUs Ray gave this task: `cuda` in the run is the assigned device, and a run that
    # asked for no GPU sees none (never GPU 0 of a shared node by habit).
    child_env = {**(env or {}), "CUDA_VISIBLE_DEVICES": ",".join(gpu_ids)}
    log_line(Path(log_path), f"medtransfer: attempt {placement['attempt']} of this run on node {node_label(placement)} "
                             f"(host {placement['host']}), CUDA_VISIBLE_DEVICES={child_env['CUDA_VISIBLE_DEVICES']!r}")
    result = execute_command(command, log_path, child_env, cwd)
    placement.update(finished_at=_now(), seconds=result["seconds"], returncode=result["returncode"])
    attempts[-1] = placement
    save_json(folder / ATTEMPTS_NAME, attempts)
    return {**result, "placement": placement, "attempts": len(attempts)}


def node_summary(entries: dict[str, dict]) -> dict[str, dict]:
    """Per node (status label): the runs whose last attempt it ran, how many of those finished or failed, the
    attempts made there (of any run), and the wall time of the runs it finished."""
    nodes: dict[str, dict] = {}

    def node(label: str) -> dict:
        return nodes.setdefault(label, {"runs": 0, "finished": 0, "failed": 0, "attempts": 0, "seconds": 0.0})

    for entry in entries.values():
        for attempt in entry.get("placements") or []:
            node(attempt["node"])["attempts"] += 1
        if not entry.get("node"):
            continue
        summary = node(entry["node"])
        summary["runs"] += 1
        if entry.get("state") in ("finished", "failed"):
            summary[entry["state"]] += 1
        if entry.get("state") == "finished" and entry.get("seconds"):
            summary["seconds"] = round(summary["seconds"] + float(entry["seconds"]), 1)
    return dict(sorted(nodes.items()))


def placement_fields(run_folder: str | Path) -> dict:
    """A status entry's cluster fields, from the run folder's attempts.json: the node of the last attempt, its
    resources and GPUs, the attempt count, and every attempt's node (oldest first)."""
    attempts = read_attempts(run_folder)
    if not attempts:
        return {}
    last = attempts[-1]
    return {"node": node_label(last), "node_id": last.get("node_id"), "host": last.get("host"),
            "resources": last.get("resources"), "gpu_ids": last.get("gpu_ids"), "attempts": len(attempts),
            "placements": [{"node": node_label(a), "started_at": a.get("started_at"), "seconds": a.get("seconds"),
                            "returncode": a.get("returncode")} for a in attempts]}


# Shared storage ---------------------------------------------------------------------------------------------
def file_fingerprint(paths: list[str]) -> list[list]:
    """(path, size or None) of each file: what a node must see alike (size, not content: cheap on big scans)."""
    out = []
    for path in paths:
        try:
            out.append([path, os.stat(path).st_size])
        except OSError:
            out.append([path, None])
    return out


def _sha256(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def probe_storage(study_dir: str, token: str, manifests: dict[str, str], bundle_root: str,
                  data_files: dict[str, list[list]]) -> dict[str, Any]:
    """On one node: read the driver's token in the study folder, write this node's own token there, and check
    the manifests (sha256), the bundle folder and each data root's sample files (sizes) as the driver saw them.
    Returns the node and its problems (one sentence each)."""
    node = this_node()
    problems = []
    check_dir = Path(study_dir) / STORAGE_CHECK_DIR
    try:
        seen = (check_dir / "driver.token").read_text()
    except OSError as error:
        seen = None
        problems.append(f"does not see the study folder {study_dir} ({error.strerror or error}): mount the shared "
                        "file system at the same path on every node")
    if seen is not None and seen != token:
        problems.append(f"sees another study folder at {study_dir} (its token differs): a local folder of the same "
                        "name, not the shared one")
    if seen == token:
        try:
            (check_dir / f"{node['node_id']}.token").write_text(f"{token} {node['node_id']}")
        except OSError as error:
            problems.append(f"cannot write into the study folder {study_dir} ({error.strerror or error})")
    for name, (path, digest) in manifests.items():
        found = _sha256(path)
        if found != digest:
            problems.append(f"data manifest {name!r} at {path} is " + ("missing" if found is None else "another file"))
    if not Path(bundle_root).is_dir():
        problems.append(f"does not see the bundle {bundle_root}")
    for root, expected in data_files.items():
        differ = [path for (path, size), (_, seen_size) in zip(expected, file_fingerprint([p for p, _ in expected]))
                  if seen_size != size]
        if differ:
            problems.append(f"does not see data root {root} as the driver does ({len(differ)} of {len(expected)} "
                            f"sampled files missing or of another size, e.g. {differ[0]})")
    return {**node, "problems": problems}


def storage_paths(spec) -> tuple[dict[str, tuple[str, str]], dict[str, list[list]]]:
    """What every node must see: each manifest (path, sha256) and, per data root, a sample of its files' sizes."""
    manifests, data_files = {}, {}
    for name, info in spec.manifests.items():
        manifests[name] = (str(info.path), _sha256(str(info.path)))
        if info.data_root:
            entries = [e for split in ("training", "validation", "test") for e in info.content.get(split) or []]
            step = max(1, len(entries) // DATA_SAMPLE)
            sample = [str(Path(info.data_root) / e["image"]) for e in entries[::step][:DATA_SAMPLE]]
            data_files.setdefault(info.data_root, []).extend(file_fingerprint(sample))
    return manifests, data_files


def check_shared_storage(ray, study_dir: str | Path, spec, node_ids: list[str],
                         timeout_seconds: float = 120.0) -> dict[str, dict]:
    """Every node in `node_ids` proves it sees the study folder (token write/read), the manifests, the bundle and
    the data as the driver does, before any run is placed. Returns {node label: node info}; raises
    SharedStorageError naming each failing node and what it does not see."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    study_dir = Path(study_dir).resolve()
    check_dir = study_dir / STORAGE_CHECK_DIR
    check_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    (check_dir / "driver.token").write_text(token)
    manifests, data_files = storage_paths(spec)
    missing_roots = [root for root, files in data_files.items() if any(size is None for _, size in files)]
    if missing_roots:
        raise SharedStorageError(f"the driver itself does not see every sampled file of data root {missing_roots[0]}")
    probe = ray.remote(num_cpus=0, max_retries=0)(probe_storage)
    refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(
        str(study_dir), token, manifests, str(spec.bundle_root), data_files): node_id for node_id in node_ids}
    try:
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_seconds)
        failures, nodes = [], {}
        for ref in late:
            ray.cancel(ref, force=True)
            failures.append(f"node {refs[ref][:8]} did not answer the storage check within {timeout_seconds:g} s")
        for ref in ready:
            try:
                report = ray.get(ref)
            except Exception as error:  # the node died or could not run the probe
                failures.append(f"node {refs[ref][:8]} could not run the storage check ({type(error).__name__})")
                continue
            label = f"{node_label(report)} (host {report['host']})"
            if not report["problems"] and _read(check_dir / f"{report['node_id']}.token") \
                    != f"{token} {report['node_id']}":
                report["problems"].append(f"wrote its token, but the driver does not read it back in {check_dir}")
            for problem in report["problems"]:
                failures.append(f"node {label} {problem}")
            nodes[node_label(report)] = report
        if failures:
            raise SharedStorageError("shared storage check failed; no run was placed: " + "; ".join(failures))
        return nodes
    finally:
        for path in check_dir.glob("*.token"):
            path.unlink(missing_ok=True)
        try:
            check_dir.rmdir()
        except OSError:
            pass
