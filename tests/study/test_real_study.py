"""One tiny study through the real bundle (separate processes): pretraining then transfer from its pretrained.pt, resume, report."""

import csv
import json

from medtransfer.study.runner import run_study
from tests.study.conftest import tiny_study, write_study


def test_tiny_real_study_end_to_end(tmp_path, medtransfer_home):
    content = tiny_study(finetune={**tiny_study()["finetune"], "strategies": ["encoder"],
                                   "fractions": [0.1], "seeds": [0]})
    study_file = write_study(tmp_path, content)
    study_dir = tmp_path / "out"
    outcome = run_study(study_file, study_dir, workers=1, progress=False)
    assert outcome["counts"]["finished"] == 2, json.loads((study_dir / "status.json").read_text())
    runs = {p.name: p for p in (study_dir / "runs").iterdir()}
    encoder = json.loads((runs[next(n for n in runs if "-encoder-" in n)] / "run.json").read_text())
    pre = next(n for n in runs if n.startswith("pre-"))
    assert encoder["transfer"]["loaded_parts"] == ["encoder"]
    assert encoder["transfer"]["source_checkpoint"] == str(study_dir / "runs" / pre / "pretrained.pt")
    log = (runs[pre] / "log.txt").read_text()
    assert "medtransfer: epoch 2/2 done" in log  # what the progress bar reads
    rows = list(csv.DictReader(open(study_dir / "results.csv")))
    assert len(rows) == 12 and {r["strategy"] for r in rows} == {"encoder"}
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)

    again = run_study(study_file, study_dir, progress=False)
    assert again["already_finished"] == 2 and again["seconds"] < 30


def test_real_study_with_cka_and_transferability_analysis(tmp_path, medtransfer_home):
    """Checkpoint scores land in the pretraining run, fine-tunes start from each checkpoint, the report pairs
    them (Spearman over 3 checkpoints) and every grid run gets its layer CKA files (reused on re-run)."""
    content = tiny_study(
        pretraining=[{"objective": "reconstruction",
                      "settings": {"max_epochs": 3, "iterations_per_epoch": 2, "checkpoint_epochs": [1, 2, 3]}}],
        finetune={**tiny_study()["finetune"], "strategies": ["scratch", "encoder"], "fractions": [0.1]},
        analysis={"cka": True, "cka_images": 4, "transferability": {"strategy": "encoder", "fraction": 0.1}})
    study_dir = tmp_path / "out"
    outcome = run_study(write_study(tmp_path, content), study_dir, workers=2, progress=False)
    assert outcome["counts"]["finished"] == 1 + 4 + 4, json.loads((study_dir / "status.json").read_text())
    runs = {p.name: p for p in (study_dir / "runs").iterdir()}
    pre = json.loads((runs[next(n for n in runs if n.startswith("pre-"))] / "run.json").read_text())
    assert [c["epoch"] for c in pre["transferability"]["checkpoints"]] == [1, 2, 3]
    from_epoch_1 = next(n for n in runs if "-e1-encoder-" in n)
    record = json.loads((runs[from_epoch_1] / "run.json").read_text())
    assert record["transfer"]["source_checkpoint"].endswith("checkpoints/epoch_0001.pt")

    assert outcome["cka"] == {"computed": 4, "reused": 0, "failed": {}}
    cka = json.loads((runs[next(n for n in runs if "-encoder-f0.1-s0-" in n and "-e" not in n.split("-encoder")[0][-3:])]
                      / "cka" / "cka.json").read_text())
    assert set(cka["comparisons"]) == {"vs start", "vs random", "vs seed 1"}
    assert all(0.0 <= row["cka"] <= 1.0 + 1e-6 for rows in cka["comparisons"].values() for row in rows)

    summary = (study_dir / "summary.md").read_text()
    assert "## Layer CKA" in summary and "## Transferability scores vs fine-tuned Dice" in summary
    assert "| all | robustness |" in summary and "| 3 |" in summary  # pooled Spearman over 3 checkpoints
    assert (study_dir / "figures" / "cka_layers.png").stat().st_size > 0
    assert (study_dir / "figures" / "transferability_vs_dice.png").stat().st_size > 0
    rows = list(csv.DictReader(open(study_dir / "results.csv")))
    assert {r["checkpoint_epoch"] for r in rows} == {"", "1", "2"}
    grid_rows = [r for r in rows if r["checkpoint_epoch"] == ""]
    assert {r["strategy"] for r in grid_rows} == {"scratch", "encoder"}

    again = run_study(write_study(tmp_path, content), study_dir, progress=False)
    assert again["already_finished"] == 9 and again["cka"] == {"computed": 0, "reused": 4, "failed": {}}
