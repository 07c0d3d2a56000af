"""The study folder read back: a folder whose data is no longer reachable still gives its study, without
touching the environment."""

import os
import shutil

from medtransfer.study.folder import load_study_dir
from medtransfer.study.runner import open_study_dir
from medtransfer.study.spec import load_study
from tests.conftest import REPO_ROOT


def test_study_folder_reads_back_when_its_data_moved(tmp_path, monkeypatch, medtransfer_home):
    monkeypatch.delenv("MEDTRANSFER_DATA", raising=False)
    data_root = tmp_path / "Task04_Hippocampus"
    data_root.mkdir()
    spec = load_study(REPO_ROOT / "studies" / "hippocampus_lowdata.yaml", data_root=str(data_root))
    study_dir = open_study_dir(spec, tmp_path / "study")
    here = load_study_dir(study_dir)
    assert here.target.data_root == str(data_root.resolve())

    shutil.rmtree(data_root)  # moved, or not mounted on the machine that writes the report
    moved = load_study_dir(study_dir)
    assert "MEDTRANSFER_DATA" not in os.environ
    assert moved.target.data_root is None  # no data root is known here, and none is made up
    assert moved.content_hash == spec.content_hash and moved.content == spec.content
    assert [run.run_id for run in moved.expand()] == [run.run_id for run in spec.expand()]
