"""`medtransfer study run|plan|report|status`. Wire with `register(commands)` in medtransfer/cli.py."""

from __future__ import annotations

import argparse
import json
import sys


def _size(args: argparse.Namespace, yes: bool):
    """The size table (medtransfer.study.size) of the study file, printed before anything runs."""
    from pathlib import Path

    from medtransfer.study.size import state_size
    from medtransfer.study.spec import load_study

    spec = load_study(args.study_file, data_root=args.data_root, trusted=args.trusted)
    return spec, state_size(spec, args.study_dir or Path("runs") / "studies" / spec.name, args.workers, yes=yes)


def _plan(args: argparse.Namespace) -> int:
    _size(args, yes=True)
    return 0


def _run(args: argparse.Namespace) -> int:
    from medtransfer.study.runner import run_study
    from medtransfer.study.size import record_timings

    spec, _ = _size(args, yes=args.yes)  # refuses a study above the threshold without --yes (or a tty "yes")
    outcome = run_study(args.study_file, study_dir=args.study_dir, data_root=args.data_root,
                        executor=args.executor, workers=args.workers, address=args.address,
                        allow_changed=args.allow_changed, progress=not args.no_progress, report=not args.no_report,
                        preload=not args.no_preload, trusted=args.trusted, cpus_per_run=args.cpus_per_run,
                        gpus_per_run=args.gpus_per_run, max_retries=args.max_retries)
    record_timings(spec, outcome["study_dir"])  # seconds per run on this machine, for the next projection
    counts = outcome["counts"]
    print(f"{outcome['study_dir']}: {counts['finished']} finished, {counts['failed']} failed, "
          f"{counts['skipped']} skipped ({outcome['already_finished']} were already finished); "
          f"{outcome['seconds'] / 60:.1f} min")
    if "cka" in outcome:
        cka = outcome["cka"]
        print(f"layer CKA: {cka['computed']} computed, {cka['reused']} reused, {len(cka['failed'])} failed"
              + "".join(f"\n  {run_id}: {error}" for run_id, error in cka["failed"].items()))
    if "report" in outcome:
        print(f"report: {outcome['report']['summary']}, {outcome['report']['results']}")
    return 0 if counts["failed"] == 0 and counts["skipped"] == 0 else 1


def _report(args: argparse.Namespace) -> int:
    from medtransfer.study.report import write_report

    report = write_report(args.study_dir, figures=not args.no_figures)
    print(f"wrote {report['summary']}, {report['findings']} and {report['results']} ({report['n_rows']} rows); "
          f"figures: {', '.join(report['figures']) or 'none'}; {len(report['problems'])} run(s) not finished")
    return 0


def _status(args: argparse.Namespace) -> int:
    from medtransfer.study.runner import study_status

    status = study_status(args.study_dir)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    counts = status["counts"]
    print(f"study {status['study']} in {status['study_dir']} ({'running now' if status['active'] else 'not running'}): "
          + ", ".join(f"{n} {state}" for state, n in counts.items() if n))
    for run_id, entry in status["runs"].items():
        if entry["state"] == "finished" and not args.all:
            continue
        detail = ""
        if entry["state"] == "running":
            detail = f"epoch {entry.get('epoch') or 0}/{entry.get('max_epochs') or '?'}"
        elif entry.get("error"):
            lines = entry["error"].strip().splitlines()
            detail = "\n    ".join(lines) if args.errors else (lines[-1] if lines else "")
        elif entry.get("note"):
            detail = entry["note"]
        where = (f"  [{entry['node']}, {entry.get('attempts', 1)} attempt(s)"
                 + (f", {entry['seconds']:.0f} s" if entry.get("seconds") else "") + "]") if entry.get("node") else ""
        print(f"  {entry['state']:<11} {run_id}  {detail}{where}")
    if status["nodes"]:
        print("nodes (runs by their last attempt; attempts of any run; wall time of finished runs):")
        for node, summary in status["nodes"].items():
            print(f"  {node}: {summary['runs']} runs ({summary['finished']} finished, {summary['failed']} failed), "
                  f"{summary['attempts']} attempts, {summary['seconds'] / 60:.1f} min")
    return 0


def register(commands) -> None:
    """Add `study run|report|status` to the `medtransfer` command's subparsers."""
    study = commands.add_parser("study", help="transfer-learning studies: a grid of runs, resumable, with a report")
    sub = study.add_subparsers(dest="study_command", required=True)

    run = sub.add_parser("run", help="run (or resume) a study file, then write its report")
    run.add_argument("study_file", help="study YAML file (see medtransfer/study/spec.py)")
    run.add_argument("--study-dir", help="study folder (default: runs/studies/<name>)")
    run.add_argument("--data-root", help="folder the study's data manifest paths are relative to")
    run.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="local processes (default) or an existing Ray cluster")
    run.add_argument("--workers", type=int, default=None,
                     help="runs at once (local default 1; ray default: as many as the live nodes hold)")
    run.add_argument("--address", help="Ray cluster address (e.g. HOST:6379 or 'auto')")
    run.add_argument("--cpus-per-run", type=float, default=None,
                     help="ray: CPUs each run asks of a node (default: the study file's `resources`, else 1)")
    run.add_argument("--gpus-per-run", type=float, default=None,
                     help="ray: GPUs each run asks of a node; the run uses the GPU Ray assigns (default: the study "
                          "file's `resources`, else 0)")
    run.add_argument("--max-retries", type=int, default=3,
                     help="ray: retries of a run lost to a node or worker failure, each resuming from its checkpoint "
                          "(a run that fails by itself is not retried; default 3)")
    run.add_argument("--allow-changed", action="store_true",
                     help="adopt a changed study file in an existing study folder: unchanged runs keep their ids "
                          "and results, new runs are added, the report covers the new grid only")
    run.add_argument("--no-preload", action="store_true",
                     help="local executor: start every run as a fresh interpreter instead of forking it from a "
                          "server that has imported torch/MONAI once (~4 s less per run)")
    run.add_argument("--trusted", action="store_true",
                     help="allow settings that are MONAI expressions or references ($..., @..., %%...): they run as "
                          "code in every run; only for a study file you wrote or have read")
    run.add_argument("--yes", action="store_true",
                     help="start a study above the size threshold (500 runs or 24 h projected; "
                          "MEDTRANSFER_CONFIRM_RUNS / MEDTRANSFER_CONFIRM_HOURS) without asking")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-report", action="store_true", help="skip results.csv, summary.md and figures")
    run.set_defaults(handler=_run)

    plan = sub.add_parser("plan", help="runs per stage and projected wall time of a study file; trains nothing")
    plan.add_argument("study_file", help="study YAML file")
    plan.add_argument("--study-dir", help="study folder whose finished runs are left out (default: runs/studies/<name>)")
    plan.add_argument("--data-root", help="folder the study's data manifest paths are relative to")
    plan.add_argument("--workers", type=int, default=None, help="runs at once the projection assumes (default 1)")
    plan.add_argument("--trusted", action="store_true", help="as for `study run`")
    plan.set_defaults(handler=_plan)

    report = sub.add_parser("report", help="re-render results.csv, summary.md, findings.md and figures/ from "
                                           "finished runs")
    report.add_argument("study_dir", help="study folder (runs/studies/<name>)")
    report.add_argument("--no-figures", action="store_true", help="tables, summary.md and findings.md only")
    report.set_defaults(handler=_report)

    status = sub.add_parser("status", help="what is finished, running, failed, skipped or pending")
    status.add_argument("study_dir", help="study folder (runs/studies/<name>)")
    status.add_argument("--all", action="store_true", help="list finished runs too")
    status.add_argument("--errors", action="store_true", help="full traceback tails of failed runs")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m medtransfer.study.cli_commands ...`) until cli.py wires `register`."""
    from medtransfer.errors import MedtransferError

    parser = argparse.ArgumentParser(prog="medtransfer")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except MedtransferError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
