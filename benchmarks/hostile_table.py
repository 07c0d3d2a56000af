"""The hostile table of issue 26: each case of tests/hostile/hostile_cases.py run against a checkout, classified.

    python benchmarks/hostile_table.py [--repo PATH] [--json OUT]

`--repo` is the checkout whose `medtransfer` is run (default: this one), so the same cases measure an older
commit (e.g. a `git worktree add /tmp/before <commit>`). The cases and their damaged files come from this
checkout. Each case runs `medtransfer.cli.main` in-process in a fresh folder and is counted as one of:

- escape: a file under the case's ``outside/`` folder was opened (Python's audit hook), or the command went on
  past an input that leads outside its root without refusing it (a C++ reader such as SimpleITK opens files the
  hook cannot see);
- data lost: a file that existed before the command was changed or removed (outside the command's outputs);
- traceback: a Python traceback, or the catch-all "rerun with --debug" line (an error nothing anticipated);
- silent: exit status 0, or a study that began training (the executor is replaced by a tripwire) without a
  refusal;
- unclear: an error line that does not name the file (or count) and its cause;
- clear: an error that names both, and nothing else went wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
OUTCOMES = ("clear", "unclear", "traceback", "silent", "data lost", "escape")


class TrainingStarted(BaseException):
    """Raised by the tripwire executor: the study got as far as starting runs."""


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _hashes(root: Path, skip: tuple[Path, ...]) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in filenames:
            path = here / name
            try:
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if not path.is_symlink() else \
                    "link:" + os.readlink(path)
            except OSError:
                out[str(path)] = "unreadable"
    return out


_watch: dict = {"folder": None, "opened": set()}


def _audit(event, args):
    folder = _watch["folder"]
    if folder is None or event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    try:
        real = os.path.realpath(os.fsdecode(args[0]))
    except (TypeError, ValueError):
        return
    if real.startswith(folder):
        _watch["opened"].add(real)


def classify(case, code, text: str, rows_text: str, started: bool, opened: set, lost: list) -> str:
    whole = text + rows_text
    refused = code != 0 and case.names in whole and any(cause in whole for cause in case.causes)
    if opened or (case.escape and not refused):
        return "escape"
    if lost:
        return "data lost"
    if "Traceback" in whole or "rerun with --debug" in whole:
        return "traceback"
    if code == 0 or started:
        return "silent"
    return "clear" if refused else "unclear"


def run_case(make, tmp: Path, model: Path | None, cli) -> dict:
    os.chdir(tmp / "cwd")
    case = make(tmp, model) if model is not None else make(tmp)
    for key, value in case.env.items():
        os.environ[key] = value
    before = _hashes(tmp, tuple(Path(p) for p in case.outputs))
    out, err = io.StringIO(), io.StringIO()
    started = False
    _watch.update(folder=str((tmp / "outside").resolve()) + os.sep, opened=set())
    began = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main([str(a) for a in case.argv])
            except SystemExit as exit_request:
                code = exit_request.code
            except TrainingStarted:
                code, started = 0, True
            except Exception as error:  # noqa: BLE001 - a crash is an outcome here
                import traceback

                code = 1
                err.write("Traceback (escaped main)\n" + "".join(traceback.format_exception(error)))
    finally:
        seconds = time.perf_counter() - began
        opened = set(_watch["opened"])
        _watch["folder"] = None
        for key in case.env:
            os.environ.pop(key, None)
    after = _hashes(tmp, tuple(Path(p) for p in case.outputs))
    lost = sorted(path for path, digest in before.items() if after.get(path) != digest)
    rows_text = ""
    summary = tmp / "masks" / "summary.csv"
    if summary.is_file():  # segment: a bad scan is a failed row; its error is what the user reads
        rows = list(csv.DictReader(open(summary)))
        rows_text = "\n".join(f"{r['scan']} {r['status']} {r['error']}" for r in rows if r["scan"] != "good")
        if rows and all(r["status"] == "ok" for r in rows):
            code = 0
    text = out.getvalue() + err.getvalue()
    outcome = classify(case, code, text, rows_text, started, opened, lost)
    last = [line for line in (text + "\n" + rows_text).splitlines() if line.strip()]
    shown = next((line for line in last if "error" in line.lower() or line.startswith("FAIL")), last[-1] if last else "")
    return {"command": case.command, "case": make.__name__, "outcome": outcome, "code": code,
            "seconds": round(seconds, 2), "line": shown.strip()[:300], "opened_outside": sorted(opened), "lost": lost}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=str(HERE), help="checkout whose medtransfer is measured")
    parser.add_argument("--json", help="write every case's outcome here")
    args = parser.parse_args()
    repo = Path(args.repo).resolve()
    sys.path.insert(0, str(repo))
    os.environ.setdefault("MEDTRANSFER_TEST_DATA", str(HERE.parent / "shared" / "data"))
    work = Path(tempfile.mkdtemp(prefix="hostile_table_"))
    os.environ["MEDTRANSFER_HOME"] = str(work / "home")
    import medtransfer

    assert Path(medtransfer.__file__).resolve().is_relative_to(repo), medtransfer.__file__
    import tests  # the measured checkout's tests package (tiny_study, make_run) ...

    _load("tests.hostile.damaged_files", HERE / "tests" / "hostile" / "damaged_files.py")  # ... and this one's cases
    cases = _load("tests.hostile.hostile_cases", HERE / "tests" / "hostile" / "hostile_cases.py")
    from medtransfer import cli
    import medtransfer.study.runner as runner

    def tripwire(*_args, **_kwargs):
        raise TrainingStarted()

    runner.make_executor = tripwire
    sys.addaudithook(_audit)
    from tests.inference.test_bundle_loading import make_run

    model = make_run(work / "model" / "run", Path(os.environ["MEDTRANSFER_TEST_DATA"]))
    results = []
    plan = [(make, None) for make in cases.DATA_CASES] + [(make, model) for make in cases.SEGMENT_CASES] + \
        [(make, None) for make in cases.STUDY_CASES]
    for index, (make, needs) in enumerate(plan):
        tmp = work / f"case{index:02d}"
        (tmp / "cwd").mkdir(parents=True)
        results.append(run_case(make, tmp, needs, cli))
        print(f"{results[-1]['command']:<14} {results[-1]['case']:<36} {results[-1]['outcome']:<10} "
              f"{results[-1]['line'][:150]}", flush=True)
    os.chdir(work)
    table: dict[str, Counter] = defaultdict(Counter)
    for result in results:
        table[result["command"]][result["outcome"]] += 1
    print(f"\nhostile table for {repo} ({len(results)} cases)")
    print(f"{'command':<14} " + " ".join(f"{name:>9}" for name in OUTCOMES))
    for command, counts in table.items():
        print(f"{command:<14} " + " ".join(f"{counts[name]:>9}" for name in OUTCOMES))
    total = Counter(result["outcome"] for result in results)
    print(f"{'all':<14} " + " ".join(f"{total[name]:>9}" for name in OUTCOMES))
    if args.json:
        Path(args.json).write_text(json.dumps({"repo": str(repo), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
