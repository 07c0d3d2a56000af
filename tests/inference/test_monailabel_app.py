"""`medtransfer export --monailabel-app`: the MONAI Label app folder (its server round trip, which needs the client's
own venv with torch 2.14.1 and monailabel 0.8.5, is benchmarks/monailabel_check.sh)."""

import ast
import json

import pytest

from medtransfer.atomic import sha256_of
from medtransfer.inference.monailabel_app import (
    MARKER,
    MONAILABEL_PACKAGES,
    MonaiLabelAppError,
    model_name,
    write_monailabel_app,
)
from tests.inference.test_bundle_loading import make_bundle, make_run
from tests.inference.test_export import _cli


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, test_data):
    return make_bundle(tmp_path_factory.mktemp("app_bundle"), test_data)


def _imports(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    return names


def test_the_app_folder_serves_the_bundle_with_monai_label_s_own_task(bundle, tmp_path):
    app = write_monailabel_app(bundle, tmp_path / "app")
    assert app.name == "hippocampus_segmentation" and app.folder == tmp_path / "app"
    assert f"--conf models {app.name}" in app.start_command and "--host 127.0.0.1" in app.start_command
    main = (app.folder / "main.py").read_text()
    assert _imports(main) == {"logging", "os", "monailabel"}  # no medtransfer
    tree = ast.parse(main)
    [app_class] = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert [b.id for b in app_class.bases] == ["MONAILabelApp"]
    assert "BundleInferTask(self.model_dir, self.conf)" in main and 'MODEL = "hippocampus_segmentation"' in main
    for path in bundle.rglob("*"):  # the bundle inside, unchanged
        if path.is_file():
            copy = app.folder / "model" / app.name / path.relative_to(bundle)
            assert sha256_of(copy) == sha256_of(path), path
    readme = (app.folder / "README.md").read_text()
    for text in ("Research use only", "pip install " + " ".join(MONAILABEL_PACKAGES), "start_server --app THIS_FOLDER",
                 f"--conf models {app.name}", "3D Slicer", "Auto Segmentation", "msd_hippocampus", "CC BY-SA 4.0",
                 "mean Dice 0.710", f"/infer/{app.name}?image=SCAN_ID"):
        assert text in readme, text
    assert (app.folder / "requirements.txt").read_text().split() == list(MONAILABEL_PACKAGES)


def test_a_non_empty_folder_is_refused_unless_overwrite_and_only_our_own_app_is_replaced(bundle, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "patient_list.txt").write_text("keep me")
    with pytest.raises(MonaiLabelAppError, match="notes: not empty; .*--overwrite"):
        write_monailabel_app(bundle, notes)
    with pytest.raises(MonaiLabelAppError, match="not a MONAI Label app written by medtransfer"):
        write_monailabel_app(bundle, notes, overwrite=True)
    assert (notes / "patient_list.txt").read_text() == "keep me"

    app = write_monailabel_app(bundle, tmp_path / "app", name="hippo-v1")
    (app.folder / "stale.txt").write_text("old")
    again = write_monailabel_app(bundle, app.folder, name="hippo-v2", overwrite=True)
    assert MARKER in (again.folder / "main.py").read_text() and not (again.folder / "stale.txt").exists()
    assert [p.name for p in (again.folder / "model").iterdir()] == ["hippo-v2"]


def test_model_names_are_url_safe():
    metadata = {"network_data_format": {"outputs": {"pred": {"channel_def": {"1": "Left Hippocampus (head)"}}}}}
    assert model_name(metadata) == "left_hippocampus_head_segmentation"
    with pytest.raises(MonaiLabelAppError, match="part of a URL"):
        model_name(metadata, "../x")


def test_cli_refuses_a_non_empty_app_folder_before_exporting(test_data, tmp_path, capsys):
    run = make_run(tmp_path / "run", test_data)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert _cli(["export", str(run), "--output", str(tmp_path / "b"), "--monailabel-app", str(tmp_path / "busy")]) == 2
    assert "busy: not empty" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert _cli(["export", str(run), "--output", str(tmp_path / "b"), "--monailabel-app", str(tmp_path / "app")]) == 0
    out = capsys.readouterr().out
    assert "MONAI Label app ->" in out and "monailabel start_server" in out
    meta = json.loads((tmp_path / "app" / "model" / "hippocampus_segmentation" / "configs" / "metadata.json").read_text())
    assert meta["files_sha256"]["models/model.pt"] == sha256_of(run / "model.pt")
