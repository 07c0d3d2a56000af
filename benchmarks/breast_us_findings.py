"""Which of the seed papers' findings a study reproduces: a thin wrapper of `medtransfer study report`.

    python benchmarks/breast_us_findings.py STUDY_DIR [STUDY_DIR ...] [--figures]

Each STUDY_DIR (e.g. the folders of `studies/breast_us_cross_dataset.yaml` and of
`studies/breast_us_random_frozen_wide.yaml`) gets its report rewritten, findings.md included, and its findings.md
is printed. The claims, tests, power and verdicts are medtransfer.study.findings (every study's report has them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medtransfer.study.report import write_report  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_dirs", nargs="+")
    parser.add_argument("--figures", action="store_true", help="re-draw the figures too")
    args = parser.parse_args(argv)
    for study_dir in args.study_dirs:
        report = write_report(Path(study_dir), figures=args.figures)
        print(Path(report["findings"]).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
