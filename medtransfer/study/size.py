"""How big a study is, said before it trains anything: runs per stage and a projected wall time.

`study plan STUDY` prints the table and stops; `study run` prints it first and, above a threshold (500 runs
to train or 24 h projected by default; MEDTRANSFER_CONFIRM_RUNS / MEDTRANSFER_CONFIRM_HOURS change them),
goes on only with `--yes` or a "yes" typed at a terminal. One mistyped range (`seeds: 0..100000`) then costs a
prompt, not a day.

Seconds per run come from, in this order: the runs of this study already finished in its folder (their
run.json `wall_time_seconds`), and the runs this machine has finished before, kept per bundle and kind in
``MEDTRANSFER_HOME/run_seconds.json`` (written after every `study run`). With neither, the time is "unknown"
and only the run count is held against its threshold.

With a `power` block in the study file (spec.py), both also print one warning line per comparison whose power
with the study's seeds is below POWER_WARNING (`power_lines`); the study still runs.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from medtransfer.study.spec import Run, StudyError, StudySpec, StudyTooLargeError

RUNS_ENV = "MEDTRANSFER_CONFIRM_RUNS"
HOURS_ENV = "MEDTRANSFER_CONFIRM_HOURS"
DEFAULT_RUNS = 500
DEFAULT_HOURS = 24.0
TIMINGS_NAME = "run_seconds.json"
POWER_WARNING = 0.5  # a comparison below this power gets a warning line before training


@dataclass
class StageSize:
    stage: str  # "pretrain <name>" or "finetune <strategy>"
    kind: str
    runs: int
    to_run: int
    seconds_per_run: float | None
    timed_by: str  # where seconds_per_run comes from


@dataclass
class StudySize:
    name: str
    stages: list[StageSize]
    workers: int
    notes: list[str] = field(default_factory=list)

    @property
    def runs(self) -> int:
        return sum(stage.runs for stage in self.stages)

    @property
    def to_run(self) -> int:
        return sum(stage.to_run for stage in self.stages)

    @property
    def projected_seconds(self) -> float | None:
        """Run time of what is left, spread over `workers` (pretraining runs gate their fine-tunes, so this is a
        lower bound when there are fewer pretraining runs than workers)."""
        if any(stage.to_run and stage.seconds_per_run is None for stage in self.stages):
            return None
        return sum(stage.to_run * stage.seconds_per_run for stage in self.stages if stage.to_run) / max(1, self.workers)


def _home() -> Path:
    from medtransfer.data.synthetic import default_home

    return default_home()


def _timings_path() -> Path:
    return _home() / TIMINGS_NAME


def machine_timings() -> dict[str, dict]:
    """{"<bundle>:<kind>": {"runs": n, "seconds": total}} measured on this machine (empty when none yet)."""
    try:
        content = json.loads(_timings_path().read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def _key(spec: StudySpec, kind: str) -> str:
    return f"{spec.bundle_root.name}:{kind}"


def _run_record(study_dir: Path, run: Run) -> dict | None:
    from medtransfer.study.folder import read_json, run_dir

    path = run_dir(study_dir, run) / "run.json"
    return read_json(path) if path.is_file() else None


def _stage_of(run: Run) -> str:
    return f"pretrain {run.objective}" if run.kind == "pretrain" else f"finetune {run.strategy}"


def study_size(spec: StudySpec, study_dir: str | Path | None, workers: int | None = None) -> StudySize:
    """Runs per stage, what is left to train in `study_dir`, and seconds per run as measured (see above)."""
    workers = max(1, int(workers or 1))
    runs = spec.expand()
    study_dir = Path(study_dir) if study_dir else None
    measured: dict[str, list[float]] = defaultdict(list)
    finished: Counter = Counter()
    for run in runs:
        record = _run_record(study_dir, run) if study_dir is not None and study_dir.is_dir() else None
        if record and record.get("status") == "finished":
            finished[_stage_of(run)] += 1
            if isinstance(record.get("wall_time_seconds"), (int, float)):
                measured[run.kind].append(float(record["wall_time_seconds"]))
    machine = machine_timings()
    stages: list[StageSize] = []
    counts = Counter(_stage_of(run) for run in runs)
    kinds = {_stage_of(run): run.kind for run in runs}
    for stage in dict.fromkeys(_stage_of(run) for run in runs):
        kind = kinds[stage]
        entry = machine.get(_key(spec, kind)) or {}
        if measured[kind]:
            seconds, source = sum(measured[kind]) / len(measured[kind]), f"{len(measured[kind])} finished here"
        elif entry.get("runs"):
            seconds, source = entry["seconds"] / entry["runs"], f"this machine, {entry['runs']} run(s)"
        else:
            seconds, source = None, "not measured yet"
        stages.append(StageSize(stage, kind, counts[stage], counts[stage] - finished[stage], seconds, source))
    return StudySize(spec.name, stages, workers)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def size_lines(size: StudySize) -> list[str]:
    """The table `study plan` and `study run` print."""
    width = max([len("stage")] + [len(stage.stage) for stage in size.stages])
    lines = [f"study {size.name}: {size.runs:,} runs, {size.to_run:,} to train, projected "
             f"{_duration(size.projected_seconds)} with {size.workers} worker(s)",
             f"  {'stage':<{width}}  {'runs':>8}  {'to train':>8}  {'per run':>8}  timed by"]
    for stage in size.stages:
        lines.append(f"  {stage.stage:<{width}}  {stage.runs:>8,}  {stage.to_run:>8,}  "
                     f"{_duration(stage.seconds_per_run):>8}  {stage.timed_by}")
    return lines


def planned_comparisons(spec: StudySpec) -> list[tuple[str, str, bool]]:
    """(arm, reference, is an equivalence claim) per comparison the report makes: each strategy of the grid vs
    scratch (when scratch is in it), then the study file's `comparisons`. Power depends on the seeds and the sd
    only, so one comparison stands for every source × fraction it is made at."""
    equivalence = set((spec.power or {}).get("equivalence") or [])
    baseline = "scratch"
    pairs = [(s, baseline) for s in spec.strategies if s != baseline] if baseline in spec.strategies else []
    pairs += [pair for pair in spec.comparisons if pair not in pairs]
    return [(arm, reference, arm.rpartition("/")[2] in equivalence and reference.rpartition("/")[2] == baseline)
            for arm, reference in pairs]


def comparison_powers(spec: StudySpec) -> list[dict]:
    """Per planned comparison: {arm, reference, equivalence, what, power, seeds_needed, n_seeds} with the study's
    seeds and its `power` block (per comparison at the block's alpha, before Holm); [] without a block."""
    from medtransfer.evaluation.power import (difference_power, sd_diff_from_run_sd, seeds_for_difference,
                                              seeds_for_equivalence, tost_power)

    power = spec.power or {}
    if not power:
        return []
    n, alpha = len(spec.seeds), power["alpha"]
    sd = sd_diff_from_run_sd(power["run_sd"])
    out = []
    for arm, reference, equivalent in planned_comparisons(spec):
        if arm == "random_encoder_frozen" and reference == "scratch" and "reference_dice" in power:
            # claim 4's test as the findings page makes it, at the expected scratch Dice
            from medtransfer.study.findings import RATIO, RATIO_PAPER, RATIO_SD_FACTOR, ratio_effect

            ratio_sd = RATIO_SD_FACTOR * power["run_sd"]
            stated = ratio_effect(power["reference_dice"])
            value = difference_power(n, ratio_sd, stated, alpha)
            needed = seeds_for_difference(ratio_sd, stated, alpha)
            what = (f"{arm} vs {RATIO:g} × {reference} (claim 4: {sum(RATIO_PAPER) / 2:.1%} of a scratch Dice of "
                    f"{power['reference_dice']:g}, i.e. {stated:.3f} Dice above {RATIO:.0%}; sd √(1 + {RATIO:g}²) × "
                    "run sd)")
        elif equivalent:
            value = tost_power(n, sd, power["equivalence_margin"], 0.0, alpha)
            needed = seeds_for_equivalence(sd, power["equivalence_margin"], 0.0, alpha)
            what = f"{arm} ≈ {reference} (TOST within ±{power['equivalence_margin']:g} Dice)"
        elif "effect" in power:
            value = difference_power(n, sd, power["effect"], alpha)
            needed = seeds_for_difference(sd, power["effect"], alpha)
            what = f"{arm} vs {reference} (a difference of {power['effect']:g} Dice)"
        else:
            continue
        out.append({"arm": arm, "reference": reference, "equivalence": equivalent, "what": what, "power": value,
                    "seeds_needed": needed, "n_seeds": n})
    return out


def power_lines(spec: StudySpec, threshold: float = POWER_WARNING) -> list[str]:
    """One warning line per comparison whose power with the study's seeds is below `threshold`."""
    power = spec.power or {}
    lines = []
    for row in comparison_powers(spec):
        if row["power"] < threshold:
            n = row["n_seeds"]
            lines.append(f"warning: power {row['power']:.2f} for {row['what']} with {n} seed{'s' if n != 1 else ''} "
                         f"(run sd {power['run_sd']:g}, alpha {power['alpha']:g}); power 0.8 needs "
                         + (f"{row['seeds_needed']} seeds" if row["seeds_needed"] else "more seeds than can be planned"))
    return lines


def thresholds() -> tuple[int, float]:
    try:
        runs = int(os.environ.get(RUNS_ENV, DEFAULT_RUNS))
        hours = float(os.environ.get(HOURS_ENV, DEFAULT_HOURS))
    except ValueError:
        raise StudyError(f"{RUNS_ENV} must be a whole number and {HOURS_ENV} a number of hours") from None
    return runs, hours


def needs_confirmation(size: StudySize) -> str | None:
    """Why this study needs a yes (the threshold it passes), or None."""
    runs, hours = thresholds()
    seconds = size.projected_seconds
    if size.to_run > runs:
        return f"{size.to_run:,} runs to train is above {runs:,} ({RUNS_ENV})"
    if seconds is not None and seconds > hours * 3600:
        return f"a projected {_duration(seconds)} is above {hours:g} h ({HOURS_ENV})"
    return None


def confirm(size: StudySize, yes: bool, ask=None, stdin=None) -> None:
    """Return when the study may start; otherwise raise StudyTooLargeError. At a terminal, `ask` (input) is used."""
    reason = needs_confirmation(size)
    if reason is None or yes:
        return
    stdin = stdin or sys.stdin
    if stdin is not None and stdin.isatty():
        answer = (ask or input)(f"{reason}. Start it? Type yes to go on: ")
        if answer.strip().lower() in ("y", "yes"):
            return
        raise StudyTooLargeError(f"study {size.name!r} not started ({reason}); nothing was trained")
    raise StudyTooLargeError(f"study {size.name!r}: {reason}; pass --yes to start it, or `medtransfer study plan` "
                             "to see the table; nothing was trained")


def record_timings(spec: StudySpec, study_dir: str | Path) -> dict[str, dict]:
    """Add the wall times of the study's finished runs (each counted once) to MEDTRANSFER_HOME/run_seconds.json."""
    from medtransfer.atomic import save_json

    machine = machine_timings()
    counted = set(machine.get("_counted", []))
    for run in spec.expand():
        record = _run_record(Path(study_dir), run)
        seconds = (record or {}).get("wall_time_seconds")
        if not record or record.get("status") != "finished" or not isinstance(seconds, (int, float)):
            continue
        if run.run_id in counted or not math.isfinite(seconds):
            continue
        entry = machine.setdefault(_key(spec, run.kind), {"runs": 0, "seconds": 0.0})
        entry["runs"] += 1
        entry["seconds"] += float(seconds)
        counted.add(run.run_id)
    machine["_counted"] = sorted(counted)
    save_json(_timings_path(), machine)
    return machine


def state_size(spec: StudySpec, study_dir: str | Path | None, workers: int | None, yes: bool,
               stream=None, ask=None, stdin=None) -> StudySize:
    """Print the size table of `spec` and its power warnings, then `confirm` it (see the module text)."""
    size = study_size(spec, study_dir, workers)
    print("\n".join(size_lines(size) + power_lines(spec)), file=stream or sys.stdout, flush=True)
    confirm(size, yes, ask=ask, stdin=stdin)
    return size
