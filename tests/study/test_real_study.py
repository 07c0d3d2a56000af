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
