"""Which of the seed papers' findings the breast-ultrasound cross-dataset study reproduces.

    python benchmarks/breast_us_findings.py STUDY_DIR [--wide-study-dir DIR] [--output findings.json]

STUDY_DIR is a finished (or partly finished) `studies/breast_us_cross_dataset.yaml` folder; --wide-study-dir the
folder of `studies/breast_us_random_frozen_wide.yaml` (the random-frozen control at 32–256). Every comparison uses
medtransfer.evaluation.statistics: the unit of replication is the seed, each seed contributing its mean over the
test images both arms share (paired t over seeds, t-interval); Holm over the whole family printed here.

Verdicts: "reproduces" (the interval excludes the null on the claimed side, Holm p < 0.05), "direction only" (the
estimate is on the claimed side but the interval does not exclude the null), "does not reproduce" (the estimate is
on the other side). "decoder ≈ scratch" is an equivalence claim: it reproduces when the whole 95 % interval lies
within ±MARGIN Dice, and cannot be shown when it is wider. "random-frozen ≥ 90 % of scratch": per seed the ratio of
the two arms' means over the shared images, t-interval over seeds; it reproduces when the interval's lower end is
≥ 0.90, "direction only" when only the estimate is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medtransfer.evaluation.statistics import (  # noqa: E402
    holm, mean_ci, paired_over_seeds, read_results_table, unit_observations,
)

MARGIN = 0.05  # Dice: "≈" means within ±0.05 (a difference a reader would not call an effect at this Dice level)
FRACTIONS = (0.05, 0.25, 1.0)


def _cells(study_dir: Path) -> dict[tuple, dict[tuple, float]]:
    rows = [r for r in read_results_table(study_dir / "results.csv") if r.get("checkpoint_epoch") in (None, "")]
    return unit_observations(rows)


def _ratio(arm: dict, reference: dict) -> dict:
    """Per seed mean(arm) / mean(reference) over the shared units; t-interval over seeds."""
    ratios = {}
    for seed in sorted({s for _, s in arm} & {s for _, s in reference}):
        shared = [u for (u, s) in arm if s == seed and (u, seed) in reference]
        if shared:
            ratios[seed] = (sum(arm[(u, seed)] for u in shared) / len(shared)) / \
                           (sum(reference[(u, seed)] for u in shared) / len(shared))
    return {**mean_ci(ratios.values()), "per_seed": ratios}


def _verdict(test: dict, side: int) -> str:
    if test.get("estimate") is None:
        return "not measured"
    if test["estimate"] * side <= 0:
        return "does not reproduce"
    low, high = test.get("ci_low"), test.get("ci_high")
    if low is not None and (low > 0 if side > 0 else high < 0) and (test.get("p_holm") or 1) < 0.05:
        return "reproduces"
    return "direction only"


def findings(study_dir: Path, wide_dir: Path | None = None) -> list[dict]:
    cells = _cells(study_dir)
    sources = sorted({c[0] for c in cells if c[0] != "none"})
    tests: list[dict] = []

    def compare(claim, arm, reference, side, fraction):
        if arm in cells and reference in cells:
            tests.append({"claim": claim, "arm": "/".join(map(str, arm[:2])), "reference": "/".join(map(str, reference[:2])),
                          "fraction": fraction, "side": side, **paired_over_seeds(cells[arm], cells[reference])})

    scratch = {f: ("none", "scratch", f) for f in FRACTIONS}
    for source in sources:
        compare("encoder > scratch at 0.05", (source, "encoder", 0.05), scratch[0.05], +1, 0.05)
    for source in sources:
        for fraction in FRACTIONS:
            compare("decoder ≈ scratch", (source, "decoder", fraction), scratch[fraction], 0, fraction)
    classification = next((s for s in sources if s.startswith("cls")), None)
    for source in sources:
        if classification and source.startswith(("seg", "rec")):
            for fraction in FRACTIONS:
                compare("segmentation/reconstruction source > classification source",
                        (source, "encoder", fraction), (classification, "encoder", fraction), +1, fraction)
    for source in sources:
        if source.startswith("conrec"):
            for fraction in FRACTIONS:
                compare("ConRec (labels unused) useful: encoder > scratch", (source, "encoder", fraction),
                        scratch[fraction], +1, fraction)
    directional = [t for t in tests if t["side"] != 0]
    for test, adjusted in zip(directional, holm(t["p"] for t in directional)):
        test["p_holm"] = adjusted
    for test in tests:
        if test["side"] == 0:
            inside = test["ci_low"] is not None and -MARGIN <= test["ci_low"] and test["ci_high"] <= MARGIN
            test["verdict"] = ("reproduces" if inside else
                               "cannot be shown (interval wider than the margin)" if test["ci_low"] is not None and
                               test["ci_low"] < MARGIN and test["ci_high"] > -MARGIN else "does not reproduce")
        else:
            test["verdict"] = _verdict(test, test["side"])

    widths = [("16-128", cells)] + ([("32-256", _cells(wide_dir))] if wide_dir else [])
    for width, table in widths:
        for fraction in FRACTIONS:
            arm, reference = ("none", "random_encoder_frozen", fraction), ("none", "scratch", fraction)
            if arm in table and reference in table:
                ratio = _ratio(table[arm], table[reference])
                verdict = ("not measured" if ratio["mean"] is None else
                           "reproduces" if ratio["ci_low"] is not None and ratio["ci_low"] >= 0.9 else
                           "direction only" if ratio["mean"] >= 0.9 else "does not reproduce")
                tests.append({"claim": "random-frozen ≥ 90 % of scratch", "kind": "ratio", "arm": f"random_encoder_frozen ({width})",
                              "reference": f"scratch ({width})", "fraction": fraction, "estimate": ratio["mean"],
                              "ci_low": ratio["ci_low"], "ci_high": ratio["ci_high"], "p": None, "p_holm": None,
                              "n_seeds": ratio["n"], "per_seed": ratio["per_seed"], "verdict": verdict})
    return tests


def correlations(study_dir: Path) -> list[dict]:
    from medtransfer.study.analysis import transferability_table
    from medtransfer.study.folder import load_study_dir

    table = transferability_table(study_dir, load_study_dir(study_dir)) or {"spearman": []}
    out = []
    for row in table["spearman"]:
        if row["rho"] is None:
            continue
        verdict = "|ρ| ≥ 0.45" if abs(row["rho"]) >= 0.45 else "|ρ| < 0.45"
        right_sign = (row["rho"] < 0) if row["score"] == "robustness" else (row["rho"] > 0)
        out.append({**row, "verdict": f"{verdict}, {'the useful sign' if right_sign else 'the wrong sign'}"})
    return out


def _fmt(test: dict) -> str:
    if test.get("estimate") is None:
        return "–"
    sign = "" if test.get("kind") == "ratio" else "+"
    text = f"{test['estimate']:{sign}.3f}"
    if test.get("ci_low") is not None:
        text += f" [{test['ci_low']:{sign}.3f}, {test['ci_high']:{sign}.3f}]"
    if test.get("p_holm") is not None:
        text += f", p_Holm {test['p_holm']:.3g}"
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_dir")
    parser.add_argument("--wide-study-dir")
    parser.add_argument("--output", help="write the findings as JSON here")
    args = parser.parse_args(argv)
    study_dir = Path(args.study_dir)
    tests = findings(study_dir, Path(args.wide_study_dir) if args.wide_study_dir else None)
    print("| claim | arm | reference | fraction | seeds | estimate [95% CI], Holm p | verdict |")
    print("|---|---|---|---:|---:|---|---|")
    for test in tests:
        print(f"| {test['claim']} | {test['arm']} | {test['reference']} | {test['fraction']:g} | {test['n_seeds']} | "
              f"{_fmt(test)} | {test['verdict']} |")
    rho = correlations(study_dir)
    print("\n| checkpoints of | score | Spearman ρ with Dice | p | n | verdict |\n|---|---|---:|---:|---:|---|")
    for row in rho:
        print(f"| {row['stage']} | {row['score']} | {row['rho']:+.3f} | {row['p_value']:.3g} | {row['n']} | "
              f"{row['verdict']} |")
    if args.output:
        Path(args.output).write_text(json.dumps({"findings": tests, "spearman": rho}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
