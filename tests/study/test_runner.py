"""Study execution with a fake bundle (no training): report, resume, crashes, checksums, status, folder guard."""

import csv
import json

import pytest

from medtransfer.study import cli_commands
from medtransfer.study.executors import error_tail
from medtransfer.study.runner import run_study, study_status
from medtransfer.study.spec import StudyError
from tests.study.conftest import fake_command, tiny_study, write_study


def invocations(study_dir) -> int:
    return sum(len(p.read_text().splitlines()) for p in (study_dir / "runs").glob("*/invocations.txt"))


def test_study_runs_reports_and_resumes_without_rerunning(study_file, tmp_path):
    study_dir = tmp_path / "out"
    outcome = run_study(study_file, study_dir, workers=2, progress=False, command_factory=fake_command())
    assert outcome["counts"]["finished"] == 13 and outcome["counts"]["failed"] == 0  # 1 + 4 scratch + 8
    assert invocations(study_dir) == 13
    rows = list(csv.DictReader(open(study_dir / "results.csv")))
    assert len(rows) == 12 * 6  # fine-tunes × test cases
    assert {"study", "objective", "strategy", "fraction", "seed", "case", "dice", "hd95"} <= set(rows[0])
    assert {r["objective"] for r in rows if r["strategy"] == "scratch"} == {"none"}
    summary = (study_dir / "summary.md").read_text()
    assert "paired t-test over seeds" in summary and "Holm" in summary and "iterations to a common target" in summary
    assert "too few seeds for a seed-level test" in summary  # 2 seeds: estimates only, no p-values
    assert "| reconstruction | encoder | 0.1 | scratch | 2 | 0.100 | – | – | – | +0.100, +0.100 |" in summary
    assert {"iterations_to_target", "val_auc", "target_reached"} <= set(rows[0]) and "epochs_to_90" not in rows[0]
    for name in ("dice_vs_fraction.png", "validation_curves.png", "dice_heatmap.png"):
        assert (study_dir / "figures" / name).stat().st_size > 5000
    status = json.loads((study_dir / "status.json").read_text())
    assert status["counts"]["finished"] == 13 and not status["active"]

    again = run_study(study_file, study_dir, progress=False, command_factory=fake_command())
    assert again["already_finished"] == 13 and invocations(study_dir) == 13  # nothing re-ran

    # weights that no longer match run.json's checksum: only that run is redone (with overwrite)
    victim = next((study_dir / "runs").glob("ft-none-scratch-f0.1-s0-*"))
    (victim / "model.pt").write_bytes(b"tampered")
    run_study(study_file, study_dir, progress=False, command_factory=fake_command())
    assert invocations(study_dir) == 14 and "--overwrite" in (victim / "invocations.txt").read_text()

    # report re-renders from the folder alone
    (study_dir / "summary.md").unlink()
    assert cli_commands.main(["study", "report", str(study_dir)]) == 0
    assert (study_dir / "summary.md").is_file()


def test_a_crashing_run_fails_alone_and_is_reported(study_file, tmp_path, capsys):
    study_dir = tmp_path / "out"
    outcome = run_study(study_file, study_dir, progress=False,
                        command_factory=fake_command(fail={"ft-none-scratch-f0.5-s1", "pre-"}))
    counts = outcome["counts"]
    # the pretraining crash skips its 8 fine-tunes; one scratch crashes; the other 3 scratch runs finish
    assert counts == {"finished": 3, "failed": 2, "skipped": 8, "running": 0, "pending": 0}
    status = json.loads((study_dir / "status.json").read_text())
    failed = [e for e in status["runs"].values() if e["state"] == "failed"]
    assert all("Traceback" in e["error"] and "boom: this run was told to fail" in e["error"] for e in failed)
    skipped = [e for e in status["runs"].values() if e["state"] == "skipped"]
    assert all(e["error"].startswith("pretraining run pre-reconstruction") for e in skipped)
    summary = (study_dir / "summary.md").read_text()
    assert "## Runs not finished" in summary and "boom: this run was told to fail" in summary

    assert cli_commands.main(["study", "status", str(study_dir), "--errors"]) == 0
    text = capsys.readouterr().out
    assert "3 finished, 2 failed, 8 skipped" in text and "RuntimeError: boom" in text

    # fixed: re-running finishes the failed and skipped runs only
    outcome = run_study(study_file, study_dir, progress=False, command_factory=fake_command())
    assert outcome["counts"]["finished"] == 13 and invocations(study_dir) == 5 + 10
    assert study_status(study_dir)["counts"]["finished"] == 13


def test_a_different_study_file_is_refused(study_file, tmp_path):
    study_dir = tmp_path / "out"
    run_study(study_file, study_dir, progress=False, report=False, command_factory=fake_command())
    other = write_study(tmp_path, tiny_study(finetune={**tiny_study()["finetune"], "seeds": [0, 1, 2]}),
                        "other.yaml")
    with pytest.raises(StudyError, match="belongs to another study file"):
        run_study(other, study_dir, progress=False, command_factory=fake_command())
    before = invocations(study_dir)
    outcome = run_study(other, study_dir, progress=False, allow_changed=True, command_factory=fake_command())
    assert outcome["already_finished"] == 13 and invocations(study_dir) == before + 6  # only seed 2 is new


def test_cli_rejects_bad_input_before_training(tmp_path, medtransfer_home, capsys):
    bad = write_study(tmp_path, tiny_study(finetune={"strategies": ["scratch"], "fractions": [0.33], "seeds": [0]}))
    assert cli_commands.main(["study", "run", str(bad), "--study-dir", str(tmp_path / "out")]) == 2
    assert "fraction 0.33 is not in manifest" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_error_tail_keeps_the_last_traceback():
    log = "noise\nTraceback (most recent call last)\n  old\nValueError: old\nmore\n" \
          "Traceback (most recent call last)\n  File x\nRuntimeError: new\n"
    assert error_tail(log) == "Traceback (most recent call last)\n  File x\nRuntimeError: new"


def test_a_checkpoint_source_fine_tunes_from_its_file_and_is_reported_as_unchecked(tmp_path, medtransfer_home):
    """A `pretraining` entry naming a file: no pretraining run, every loading strategy starts from the file, the ids
    hash its content, and leakage.json / summary.md say the guard could not check it."""
    weights = tmp_path / "weights" / "public_unet.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"pretend weights")
    content = tiny_study(pretraining=[{"name": "public", "checkpoint": "weights/public_unet.pt",
                                       "trained_on": "an outside MRI data set"}])
    study_file = write_study(tmp_path, content)
    study_dir = tmp_path / "out"
    outcome = run_study(study_file, study_dir, workers=2, progress=False, command_factory=fake_command())
    assert outcome["counts"]["finished"] == 12 and outcome["counts"]["failed"] == 0  # 4 scratch + 8, no pretraining
    sources = [p.read_text() for p in (study_dir / "runs").glob("ft-public-*/invocations.txt")]
    assert len(sources) == 8 and all(f"--source {weights}" in text for text in sources)
    record = json.loads((study_dir / "leakage.json").read_text())
    assert record["unchecked_sources"][0]["name"] == "public"
    assert record["unchecked_sources"][0]["trained_on"] == "an outside MRI data set"
    summary = (study_dir / "summary.md").read_text()
    assert "public (checkpoint file public_unet.pt)" in summary
    assert "Source `public` is a checkpoint file" in summary and "cannot see what it was trained on" in summary
    assert "| public | encoder | 0.1 | scratch |" in summary

    from medtransfer.study.spec import parse_study

    ids = {r.run_id for r in parse_study(content, base=tmp_path).expand()}
    weights.write_bytes(b"other weights")
    changed = {r.run_id for r in parse_study(content, base=tmp_path).expand()}
    assert {i for i in ids if i.startswith("ft-none")} == {i for i in changed if i.startswith("ft-none")}
    assert {i for i in ids if i.startswith("ft-public")}.isdisjoint(changed)  # other weights are other runs


@pytest.mark.parametrize("entry, message", [
    ({"checkpoint": "missing.pt"}, "no such file"),
    ({"checkpoint": "w.pt", "objective": "segmentation"}, "unknown key(s) objective for a checkpoint source"),
    ({"checkpoint": "w.pt", "source_network": "resnet"}, "source_network: `auto`"),
    ({"checkpoint": "w.pt", "name": "none"}, "reserved"),
])
def test_bad_checkpoint_sources_are_refused_before_training(entry, message, tmp_path, medtransfer_home):
    from medtransfer.study.spec import parse_study

    (tmp_path / "w.pt").write_bytes(b"x")
    with pytest.raises(StudyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_study(tiny_study(pretraining=[entry]), base=tmp_path)


def test_runs_start_pretraining_first_then_seed_by_seed_across_the_grid(study_file, tmp_path):
    """A study stopped part-way holds complete paired seeds: every arm's seed 0 starts before any seed 1."""
    started = []
    inner = fake_command()

    def recording(run, *args, **kwargs):
        started.append(run)
        return inner(run, *args, **kwargs)

    run_study(study_file, tmp_path / "out", workers=1, progress=False, report=False, command_factory=recording)
    assert len(started) == 13 and started[0].kind == "pretrain"
    seeds = [run.seed for run in started[1:]]
    assert seeds == sorted(seeds) == [0] * 6 + [1] * 6  # scratch, encoder, decoder × 2 fractions, per seed
    assert [(r.strategy, r.fraction) for r in started[1:7]] == [(r.strategy, r.fraction) for r in started[7:]]
    assert [r.strategy for r in started[1:7]] == ["scratch", "scratch", "encoder", "encoder", "decoder", "decoder"]


def test_a_dice_panel_never_magnifies_a_small_gap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medtransfer.study.figures import MIN_DICE_SPAN, _min_span

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0.682, 0.692])
    _min_span(ax, MIN_DICE_SPAN)
    low, high = ax.get_ylim()
    assert high - low == pytest.approx(0.10) and low < 0.682 and high > 0.692
    ax.set_ylim(0.2, 0.8)  # a wide range is left alone
    _min_span(ax, MIN_DICE_SPAN)
    assert ax.get_ylim() == (0.2, 0.8)
    plt.close(fig)
