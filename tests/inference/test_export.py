"""`medtransfer export`: a self-contained, verified bundle that runs from a folder outside the repository."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from medtransfer.atomic import sha256_of
from medtransfer.inference.bundle_verify import verify_bundle
from medtransfer.inference.cli_commands import register
from medtransfer.inference.export import ExportError, export_bundle
from medtransfer.training.run_directory import RunDirectory
from tests.conftest import REPO_ROOT
from tests.inference.test_bundle_loading import COARSE_SPACING, TINY_FILTERS, TINY_PATCH, coarse_manifest, make_run

MR = "dicom_mr_brain_tumor_progression"


def _pretraining_run(folder):
    """The run a pretrained checkpoint came from: its run.json says on which data."""
    run = RunDirectory(folder, {"task": "pretraining", "objective": "contrastive_reconstruction"}).prepare()
    run.write_record({"status": "finished", "pretraining": {
        "objective": "contrastive_reconstruction",
        "source": {"manifest": "msd_hippocampus", "fraction": 1.0, "n_images": 182, "labels_used": False}}})
    checkpoint = folder / "checkpoints" / "epoch_0010.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights")
    return checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory, test_data):
    folder = tmp_path_factory.mktemp("export")
    run = make_run(folder / "run", test_data, source_checkpoint=str(_pretraining_run(folder / "pretrain")))
    bundle = export_bundle(run, folder / "hippo_bundle", zip=True, torchscript=True, manifest=coarse_manifest(folder))
    return run, bundle


def test_export_writes_a_self_contained_verified_bundle(exported):
    run, bundle = exported
    for name in ("LICENSE", "configs/inference.yaml", "configs/metadata.json", "models/model.pt", "models/model.ts",
                 "docs/README.md", "docs/data_license.txt"):
        assert (bundle / name).is_file(), name
    report = verify_bundle(bundle)
    assert report["ok"], report
    assert set(report["checks"]) == {"files", "verify_metadata", "verify_net_in_out", "safe_config", "weights_sha256",
                                     "weights_only", "torchscript", "config_expressions"}

    text = (bundle / "configs" / "inference.yaml").read_text()
    for forbidden in (str(REPO_ROOT), "bundles/", "data_manifests", str(run), "/tmp", "/root"):
        assert forbidden not in text
    config = yaml.safe_load(text)
    assert (config["spatial_dims"], config["target_spacing"], config["patch_size"], config["filters"]) == (
        3, COARSE_SPACING, TINY_PATCH, TINY_FILTERS)

    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["files_sha256"]["models/model.pt"] == sha256_of(bundle / "models" / "model.pt") == sha256_of(
        run / "model.pt")
    assert meta["files_sha256"]["models/model.ts"] == sha256_of(bundle / "models" / "model.ts")
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == ["4*n"] * 3
    assert meta["network_data_format"]["inputs"]["image"]["modality"] == "MR"
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "hippocampus"}
    assert meta["preprocessing"]["target_spacing"] == COARSE_SPACING
    assert meta["preprocessing"]["intensity_normalisation"]["upper_percentile"] == 99.5
    assert (meta["monai_version"], meta["pytorch_version"]) == ("1.6.1", torch.__version__.split("+")[0])
    assert meta["required_packages_version"]["medtransfer"] == "0.1.0"
    assert meta["training_data"]["license"] == "CC BY-SA 4.0" and meta["training_data"]["citation"]
    provenance = meta["provenance"]
    assert provenance["strategy"] == "encoder" and provenance["pretraining_objective"] == "contrastive"
    assert provenance["source_checkpoint"] == "epoch_0010.pt"  # the file's name, not this machine's path
    assert provenance["pretraining_source_data"]["manifest"] == "msd_hippocampus"
    assert (provenance["data_fraction"], provenance["seed"]) == (0.1, 3)
    assert meta["eval_metrics"]["mean_dice"] == 0.71 and meta["eval_metrics"]["mean_hd95"] == 3.5
    torchscript = meta["exports"]["torchscript"]
    assert torchscript["same_mask"] and torchscript["test_scan"].startswith("hippocampus_")

    card = (bundle / "docs" / "README.md").read_text()
    for section in ("## Intended use", "## Data it was trained on", "## Performance", "## Limitations",
                    "## What this bundle can execute", "CC BY-SA 4.0", "0.710", "contrastive", "Research use only"):
        assert section in card

    with zipfile.ZipFile(bundle.with_name("hippo_bundle.zip")) as zipped:
        names = zipped.namelist()
    assert "hippo_bundle/configs/metadata.json" in names and all(n.startswith("hippo_bundle/") for n in names)


def test_torchscript_that_differs_from_the_weights_fails_verification(exported, tmp_path):
    _, bundle = exported
    copy = shutil.copytree(bundle, tmp_path / "b")
    state = torch.load(copy / "models" / "model.pt", weights_only=True)
    state["output_block.conv.conv.bias"] = state["output_block.conv.conv.bias"] + torch.tensor([5.0, -5.0])
    torch.save(state, copy / "models" / "model.pt")
    meta = json.loads((copy / "configs" / "metadata.json").read_text())
    meta["files_sha256"]["models/model.pt"] = sha256_of(copy / "models" / "model.pt")
    (copy / "configs" / "metadata.json").write_text(json.dumps(meta))
    report = verify_bundle(copy)
    assert not report["ok"] and "gives another mask than models/model.pt" in report["checks"]["torchscript"]


def test_export_refuses_unfinished_runs_and_existing_output(exported, test_data, tmp_path):
    run, bundle = exported
    unfinished = make_run(tmp_path / "unfinished", test_data, status="running")
    with pytest.raises(ExportError, match="not finished"):
        export_bundle(unfinished, tmp_path / "b")
    pretraining = make_run(tmp_path / "pretraining", test_data, task="pretraining")
    with pytest.raises(ExportError, match="a pretraining run; its weights are a starting point for transfer"):
        export_bundle(pretraining, tmp_path / "b")
    with pytest.raises(ExportError, match="exists; choose another --output or pass --overwrite"):
        export_bundle(run, bundle)
    (tmp_path / "notes").mkdir()
    with pytest.raises(ExportError, match="is not a bundle; refusing to replace it"):
        export_bundle(run, tmp_path / "notes", overwrite=True)


def test_onnx_export_without_its_packages_says_what_to_install(exported, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(ExportError, match="pip install onnx onnxscript onnxruntime"):
        export_bundle(exported[0], tmp_path / "b", onnx=True)
    assert not (tmp_path / "b").exists()


def test_onnx_export_gives_the_same_mask(exported, test_data, tmp_path):
    """ONNX export (optional extra `medtransfer[onnx]`; the test extra installs it, so CI runs this)."""
    import onnx  # noqa: F401  (the test extra installs the ONNX packages; CI runs this test)
    import onnxruntime  # noqa: F401
    bundle = export_bundle(exported[0], tmp_path / "b", onnx=True, manifest=coarse_manifest(tmp_path))
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["exports"]["onnx"]["same_mask"] and "models/model.onnx" in meta["files_sha256"]
    assert verify_bundle(bundle)["checks"]["onnx"] == "passed"


def test_exported_bundle_runs_with_monai_in_a_fresh_process_outside_the_repo(exported, test_data, tmp_path):
    _, bundle = exported
    work = tmp_path / "collaborator"
    shutil.copytree(bundle, work / "hippo_bundle")
    scans = work / "scans"
    shutil.copytree(test_data / MR / "dicom", scans)  # three DICOM series, one folder each
    shutil.copy(test_data / "msd_hippocampus" / "images" / "hippocampus_001.nii.gz", scans)
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    completed = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", "hippo_bundle/configs/inference.yaml",
         "--bundle_root", "hippo_bundle", "--input_dir", "scans", "--output_dir", "masks"],
        cwd=work, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    references = {
        "hippocampus_001": test_data / "msd_hippocampus" / "images" / "hippocampus_001.nii.gz",
        **{name: test_data / MR / "images" / f"{name}.nii.gz"
           for name in ("HippoCrop_artificial", "PGBM-003_FLAIRreg", "PGBM-003_T1post")},
    }
    assert sorted(p.name for p in (work / "masks").iterdir()) == sorted(f"{n}_seg.nii.gz" for n in references)
    for name, reference in references.items():
        mask, original = nib.load(work / "masks" / f"{name}_seg.nii.gz"), nib.load(reference)
        assert mask.shape == original.shape and np.allclose(mask.affine, original.affine, atol=1e-4)


def _cli(argv):
    parser = argparse.ArgumentParser(prog="medtransfer")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_export(exported, tmp_path, capsys):
    run, _ = exported
    manifest = coarse_manifest(tmp_path)
    assert _cli(["export", str(run), "--output", str(tmp_path / "b"), "--manifest", str(manifest)]) == 0
    assert "exported" in capsys.readouterr().out and verify_bundle(tmp_path / "b")["ok"]
    assert _cli(["export", str(run), "--output", str(tmp_path / "b")]) == 2
    assert "exists" in capsys.readouterr().err
