"""Wall time of studies/demo.yaml and the study overhead (time outside the runs' own training).

    python benchmarks/study_demo.py [--workers 2] [--keep DIR]

overhead fraction = 1 − Σ(run.json wall_time_seconds over all runs) / total wall time. With --workers > 1 the
runs overlap, so Σ run time is divided by the number of workers for the overhead (reported as well).
The per-run overhead is mostly the bundle process's start (config parsing, data caching; the imports are done
once by the preloaded launcher, `--no-preload` for fresh interpreters) and its test evaluation, which
wall_time_seconds (the training engine's time) does not include; the study's CKA phase and report are in
the total as well (printed separately).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--keep", help="study folder to keep (default: a temporary folder)")
    parser.add_argument("--no-preload", action="store_true", help="start each run as a fresh interpreter")
    parser.add_argument("--study", default=str(REPO / "studies" / "demo.yaml"))
    args = parser.parse_args()
    from medtransfer.study.runner import run_study

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="study_demo_")) / "demo"
    os.environ.setdefault("MEDTRANSFER_HOME", str(folder.parent / "home"))
    started = time.perf_counter()
    outcome = run_study(args.study, study_dir=folder, workers=args.workers, preload=not args.no_preload)
    total = time.perf_counter() - started
    run_seconds = 0.0
    for record_path in (folder / "runs").glob("*/run.json"):
        run_seconds += float(json.loads(record_path.read_text()).get("wall_time_seconds") or 0.0)
    parallel = run_seconds / args.workers
    print(json.dumps({
        "study_dir": str(folder),
        "workers": args.workers,
        "preload": not args.no_preload,
        "runs": outcome["counts"],
        "total_wall_seconds": round(total, 1),
        "sum_run_wall_time_seconds": round(run_seconds, 1),
        "report_seconds": round(outcome.get("report_seconds", 0.0), 2),
        "cka_seconds": round(outcome.get("cka_seconds", 0.0), 1),
        "overhead_fraction": round(1 - run_seconds / total, 3),
        "overhead_fraction_per_worker": round(1 - parallel / total, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
