"""`medtransfer stats RESULTS.csv`: the study report's comparisons on any tidy results table. Wire with
`register(commands)` in medtransfer/cli.py."""

from __future__ import annotations

import argparse
from pathlib import Path


def _number(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.{digits}f}"


def _stats(args: argparse.Namespace) -> int:
    from medtransfer.evaluation.statistics import (COMPARISON_COLUMNS, StatisticsError, analyse_table,
                                                   read_results_table)
    from medtransfer.study.report import write_csv

    pairs = []
    for text in args.compare or []:
        arm, sep, reference = text.partition(":")
        if not sep or not arm or not reference:
            raise StatisticsError(f"--compare {text!r}: expected ARM:REFERENCE, e.g. encoder:encoder_frozen")
        pairs.append((arm, reference))
    results = Path(args.results)
    output = Path(args.output) if args.output else results.parent
    target = output / "comparisons.csv"
    if target.exists() and not args.force:
        raise StatisticsError(f"{target} exists; pass --force to replace it")
    rows = read_results_table(results)
    analysis = analyse_table(rows, baseline=args.baseline, pairs=pairs)
    comparisons = analysis["comparisons"]
    write_csv(target, comparisons, columns=COMPARISON_COLUMNS)
    unit = "volume (its slices' Dice averaged first)" if analysis["unit"] == "volume" else "case"
    print(f"{results}: {len(rows)} rows; unit of observation: {unit}; unit of replication: seed")
    header = ("objective", "strategy", "fraction", "baseline", "seeds", "estimate", "95% CI", "p", "p_holm")
    table = [header] + [(c["objective"] or "–", c["strategy"], f"{c['fraction']:g}", c["baseline"], str(c["n_seeds"]),
                         _number(c["estimate"]),
                         "–" if c["ci_low"] is None else f"[{_number(c['ci_low'])}, {_number(c['ci_high'])}]",
                         _number(c["p"]), _number(c["p_holm"])) for c in comparisons]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    methods = sorted({c["method"] for c in comparisons})
    print("method: " + "; ".join(methods) if methods else "no comparisons")
    print(f"{analysis['family']}.")
    for note in analysis["notes"]:
        print(f"note: {note}")
    print(f"wrote {target}")
    return 0


def register(commands) -> None:
    """Add `stats` to the `medtransfer` command's subparsers."""
    stats = commands.add_parser("stats", help="strategy-vs-baseline comparisons (seed-level, Holm) on a tidy "
                                              "results table")
    stats.add_argument("results", help="CSV with columns strategy, fraction, seed, case, dice "
                                       "(optional: objective, volume), e.g. a study's results.csv")
    stats.add_argument("--baseline", default="scratch", help="strategy every other one is compared with")
    stats.add_argument("--compare", action="append", metavar="ARM:REFERENCE",
                       help="an extra pair, e.g. encoder:encoder_frozen or conrec/encoder:supervised/encoder "
                            "(repeatable)")
    stats.add_argument("--output", "-o", help="folder for comparisons.csv (default: the results file's folder)")
    stats.add_argument("--force", action="store_true", help="replace an existing comparisons.csv")
    stats.set_defaults(handler=_stats)
