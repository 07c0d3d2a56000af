"""Where a study folder keeps things, and reading them back (the lowest floor of `medtransfer.study`).

Study folder layout::

    study.json            the study file's content and its hash (a folder belongs to one study file)
    status.json           every run's state: pending, running, finished, failed (with traceback tail), skipped
    runs/<run_id>/        one bundle output folder per run (run.json, weights, log.txt)
    results.csv, summary.md, figures/     the report (medtransfer.study.report)

The runner writes these; report, analysis and figures only read them, through this module.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

from medtransfer.study.spec import Run, StudyError, StudySpec, parse_study
from medtransfer.training.run_folder import RunFolder

STUDY_RECORD = "study.json"
STATUS_FILE = "status.json"
RUNS = "runs"
LOG_NAME = "log.txt"


def run_dir(study_dir: Path, run: Run | str) -> Path:
    return Path(study_dir) / RUNS / (run if isinstance(run, str) else run.run_id)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def mean_dice_by_run(study_dir: str | Path) -> dict[str, float]:
    """Each finished fine-tune's mean test Dice (its run.json), by run id: what two engines running one study must
    agree on (the Ray engine's equality test and `benchmarks/ray_cluster.py`). A fine-tune folder without an
    evaluated run.json is an error, not a run left out of the comparison."""
    out = {}
    for folder in sorted((Path(study_dir) / RUNS).iterdir()):
        if not folder.name.startswith("ft-"):
            continue
        record = read_json(folder / "run.json") or {}
        if (record.get("metrics") or {}).get("mean_dice") is None:
            raise StudyError(f"{folder / 'run.json'}: no mean test Dice (missing, unreadable or not evaluated)")
        out[folder.name] = float(record["metrics"]["mean_dice"])
    return out


def finished_record(run: Run, folder: Path) -> dict | None:
    """run.json of a finished run whose weights match their recorded sha256; None otherwise."""
    return RunFolder(folder).finished(run.kind)


def load_study_dir(study_dir: str | Path) -> StudySpec:
    """The study a folder was made by (from study.json), for report and status.

    When the data the study ran on is not reachable here (moved, or not mounted), the study is read with the
    study folder standing in for every data root — the report needs none — and the manifests then say that no
    data root is known (`data_root` None). Nothing is set in the environment.
    """
    study_dir = Path(study_dir)
    record = read_json(study_dir / STUDY_RECORD)
    if not record:
        raise StudyError(f"{study_dir} is not a study folder (no readable {STUDY_RECORD})")
    data_roots = record.get("data_roots") or {}
    base = Path(record["study_file"]).parent if record.get("study_file") else study_dir
    target = record["content"].get("data_manifest")
    root = data_roots.get(target) if target else None
    try:
        return parse_study(record["content"], base=base, data_root=root, source_file=record.get("study_file"),
                           trusted=bool(record.get("trusted")))
    except StudyError:
        pass
    stand_in = str(study_dir.resolve())
    content = copy.deepcopy(record["content"])
    for stage in content.get("pretraining") or []:
        if isinstance(stage, dict):
            stage["data_root"] = stand_in
    spec = parse_study(content, base=base, data_root=stand_in, source_file=record.get("study_file"),
                       trusted=bool(record.get("trusted")))
    for info in spec.manifests.values():
        info.data_root = None
    return dataclasses.replace(spec, content=record["content"],
                               content_hash=record.get("content_hash") or spec.content_hash)
