"""`medtransfer export`: a self-contained, verified bundle that runs from a folder outside the repository."""

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

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
    for name in ("LICENSE", "configs/inference.json", "configs/metadata.json", "models/model.pt", "models/model.ts",
                 "docs/README.md", "docs/data_license.txt", "scripts/__init__.py", "scripts/scan_loader.py",
                 "scripts/readers.py", "scripts/dicom.py", "scripts/checks.py", "scripts/inputs.py",
                 "scripts/integrity.py"):
        assert (bundle / name).is_file(), name
    assert not (bundle / "configs" / "inference.yaml").exists()  # one inference config: the Zoo's JSON
    report = verify_bundle(bundle)
    assert report["ok"], report
    assert set(report["checks"]) == {"files", "verify_metadata", "verify_net_in_out", "safe_config", "weights_sha256",
                                     "weights_only", "torchscript", "config_expressions"}

    text = (bundle / "configs" / "inference.json").read_text()
    for forbidden in (str(REPO_ROOT), "bundles/", "data_manifests", str(run), "/tmp", "/root", "medtransfer"):
        assert forbidden not in text
    config = json.loads(text)
    targets = _targets(config)
    assert targets and all(t.startswith(("monai.", "scripts.")) for t in targets), targets
    network = config["network_def"]
    assert (network["_target_"], network["spatial_dims"], network["filters"]) == (
        "monai.networks.nets.DynUNet", 3, TINY_FILTERS)
    assert config["inferer"]["roi_size"] == TINY_PATCH
    spacing = [t for t in config["preprocessing"]["transforms"] if t["_target_"] == "monai.transforms.Spacingd"]
    assert spacing[0]["pixdim"] == COARSE_SPACING
    assert {"_target_": "monai.handlers.CheckpointLoader", "load_path": "@checkpoint",
            "load_dict": {"model": "@network"}, "map_location": "@device"} == config["checkpointloader"]
    for script in (bundle / "scripts").glob("*.py"):  # the bundle's code runs without medtransfer
        imported = [a.name for n in ast.walk(ast.parse(script.read_text())) if isinstance(n, ast.Import)
                    for a in n.names]
        imported += [n.module or "" for n in ast.walk(ast.parse(script.read_text())) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in imported if m.split(".")[0] == "medtransfer"], script

    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["files_sha256"]["models/model.pt"] == sha256_of(bundle / "models" / "model.pt") == sha256_of(
        run / "model.pt")
    assert meta["files_sha256"]["models/model.ts"] == sha256_of(bundle / "models" / "model.ts")
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == ["8*n"] * 3  # 2x the total stride
    assert meta["network_data_format"]["inputs"]["image"]["modality"] == "MR"
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "hippocampus"}
    assert meta["preprocessing"]["target_spacing"] == COARSE_SPACING
    assert meta["preprocessing"]["intensity_normalisation"]["upper_percentile"] == 99.5
    assert (meta["monai_version"], meta["pytorch_version"]) == ("1.6.1", torch.__version__.split("+")[0])
    assert "medtransfer" not in meta["required_packages_version"]  # plain MONAI runs it
    assert {"nibabel", "pydicom", "SimpleITK", "pytorch-ignite"} <= set(meta["required_packages_version"])
    assert None not in meta["network_data_format"]["outputs"]["pred"]["value_range"]
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
                    "## What this bundle can execute", "CC BY-SA 4.0", "0.710", "contrastive", "Research use only",
                    "pip install medtransfer-0.1.0-py3-none-any.whl", "not on PyPI", '"monai==1.6.1"',
                    "--config_file THIS_FOLDER/configs/inference.json"):
        assert section in card
    assert "pip install medtransfer " not in card  # medtransfer is not on the package index

    # model.ts carries its configs like `monai.bundle ckpt_export` writes them (MONAI Deploy reads them there)
    with zipfile.ZipFile(bundle / "models" / "model.ts") as archive:
        extras = {Path(n).name: archive.read(n) for n in archive.namelist() if "/extra/" in n}
    assert json.loads(extras["inference.json"]) == config
    embedded = json.loads(extras["metadata.json"])
    assert embedded["files_sha256"]["models/model.pt"] == sha256_of(bundle / "models" / "model.pt")
    assert embedded["network_data_format"] == meta["network_data_format"]

    with zipfile.ZipFile(bundle.with_name("hippo_bundle.zip")) as zipped:
        names = zipped.namelist()
    assert "hippo_bundle/configs/metadata.json" in names and all(n.startswith("hippo_bundle/") for n in names)


def _targets(item) -> list[str]:
    if isinstance(item, dict):
        return ([item["_target_"]] if "_target_" in item else []) + [t for v in item.values() for t in _targets(v)]
    if isinstance(item, list):
        return [t for v in item for t in _targets(v)]
    return []


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


_BLOCKER = """import sys


class _BlockMedtransfer:
    def find_spec(self, name, path=None, target=None):
        if name == "medtransfer" or name.startswith("medtransfer."):
            raise ImportError(f"medtransfer is not importable in this test ({name})")
        return None


sys.meta_path.insert(0, _BlockMedtransfer())
"""
ZOO_CI = "model_zoo_ci"


def _without_medtransfer(folder: Path) -> dict:
    """An environment whose Python cannot import medtransfer (checked), whatever is installed."""
    blocker = folder / "block_medtransfer"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "sitecustomize.py").write_text(_BLOCKER)
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment["PYTHONPATH"] = str(blocker)
    probe = subprocess.run([sys.executable, "-c", "import medtransfer"], cwd=folder, env=environment,
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "medtransfer is not importable" in probe.stderr
    return environment


@pytest.fixture(scope="module")
def exported_2d(tmp_path_factory, test_data):
    folder = tmp_path_factory.mktemp("export2d")
    run = make_run(folder / "run", test_data, strategy="scratch", spatial_dims=2)
    return export_bundle(run, folder / "hc18_bundle", torchscript=True)


def _scans(spatial_dims: int, test_data: Path, folder: Path) -> Path:
    scans = folder / "scans"
    if spatial_dims == 3:
        shutil.copytree(test_data / MR / "dicom" / "HippoCrop_artificial", scans / "HippoCrop_artificial")  # a series
        shutil.copy(test_data / "msd_hippocampus" / "images" / "hippocampus_001.nii.gz", scans)
    else:
        scans.mkdir(parents=True)
        for name in ("008_HC.png", "016_HC.png"):
            shutil.copy(test_data / "hc18_fetal_head" / "images" / name, scans)
    return scans


def _plain_monai_run(work: Path) -> None:
    """`python -m monai.bundle run` of work/bundle on work/scans into work/masks, where medtransfer cannot be imported."""
    completed = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundle/configs/inference.json",
         "--meta_file", "bundle/configs/metadata.json", "--bundle_root", "bundle", "--input_dir", "scans",
         "--output_dir", "masks"],
        cwd=work, env=_without_medtransfer(work), capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]


def plain_monai_equals_segment(bundle: Path, scans: Path, work: Path, models=None) -> int:
    """`python -m monai.bundle run` of ``bundle`` where medtransfer cannot be imported == `medtransfer segment` (of
    ``models``, default the bundle) on ``scans``, voxel for voxel; returns the masks' foreground voxels."""
    from medtransfer.inference.segment import segment

    shutil.copytree(bundle, work / "bundle")
    if scans != work / "scans":
        shutil.copytree(scans, work / "scans")
    _plain_monai_run(work)
    # plain MONAI runs the exported inference.json in fp32 (its evaluator autocasts only on CUDA): compare alike
    segment(models or bundle, work / "scans", work / "segmented", progress=False, precision="fp32")
    names = sorted(p.name for p in (work / "masks").iterdir())
    assert names == sorted(p.name for p in (work / "segmented").glob("*_seg.nii.gz")) and names
    foreground = 0
    for name in names:
        plain, ours = nib.load(work / "masks" / name), nib.load(work / "segmented" / name)
        assert plain.get_data_dtype() == ours.get_data_dtype() == np.uint8
        assert np.array_equal(np.asarray(plain.dataobj), np.asarray(ours.dataobj)), name
        assert np.allclose(plain.affine, ours.affine, atol=1e-5)
        foreground += int(np.asarray(ours.dataobj).sum())
    return foreground


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_exported_bundle_runs_with_plain_monai_and_gives_segment_s_mask(spatial_dims, exported, exported_2d,
                                                                         test_data, tmp_path):
    """`python -m monai.bundle run` where medtransfer cannot be imported == `medtransfer segment`, voxel for voxel."""
    bundle = exported[1] if spatial_dims == 3 else exported_2d
    work = tmp_path / "collaborator"
    scans = _scans(spatial_dims, test_data, work)
    assert len(list(scans.iterdir())) == 2
    foreground = plain_monai_equals_segment(bundle, scans, work)
    assert foreground > 0  # the untrained network marks something, so equal masks are not two empty ones


def _zoo_checks(bundles: list[Path], test_data: Path, folder: Path, environment: dict) -> dict[str, list[str]]:
    """The Model Zoo's ci/verify_bundle.py (unchanged) through its runner, one bundle after the other."""
    runner = test_data.parent / "reference" / ZOO_CI / "run_zoo_checks.py"
    schema = test_data.parent / "reference" / "monai_meta_schema_20240725.json"
    results = {}
    for bundle in bundles:
        completed = subprocess.run([sys.executable, str(runner), str(bundle), str(schema)], cwd=folder,
                                   env=environment, capture_output=True, text=True, timeout=300)
        results[bundle.name] = [line for line in completed.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    return results


def test_exported_bundles_pass_the_model_zoo_ci_without_medtransfer(exported, exported_2d, test_data, tmp_path):
    results = _zoo_checks([exported[1], exported_2d], test_data, tmp_path, _without_medtransfer(tmp_path))
    for name, lines in results.items():
        assert len(lines) == 5 and all(line.startswith("PASS") for line in lines), (name, lines)


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


def _rgb_data(folder: Path, count: int = 5) -> Path:
    """A colour 2D data set (RGB PNGs whose channels differ) and its manifest, as `medtransfer data manifest` writes it."""
    from PIL import Image

    from medtransfer.data.manifest_builder import build_manifest

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for i in range(count):
        rgb = (rng.random((70, 90, 3)) * 255).astype(np.uint8)
        rgb[20:50, 30:60, 0] = 250  # a red lesion
        rgb[..., 2] //= 3
        Image.fromarray(rgb).save(folder / "images" / f"c{i}.png")
        label = np.zeros((70, 90), np.uint8)
        label[20:50, 30:60] = 1
        Image.fromarray(label).save(folder / "labels" / f"c{i}.png")
    content = build_manifest(folder, test_fraction=0.4, validation_fraction=0.2)
    assert content["channels"] == 3
    content["name"] = "colour_lesions"
    path = folder / "colour_lesions.json"
    path.write_text(json.dumps(content))
    return path


def test_colour_run_exports_a_three_channel_bundle_that_plain_monai_and_segment_agree_on(test_data, tmp_path):
    """A run on RGB images: the bundle's network takes 3 channels, its chain checks 3 and normalises each, the
    metadata says 3, plain MONAI and `segment` give the same mask, and a grey image is refused naming the file."""
    from PIL import Image

    from medtransfer.inference.bundle_loading import load_bundle
    from medtransfer.inference.segment import segment

    data = tmp_path / "colour"
    manifest = _rgb_data(data)
    run = make_run(tmp_path / "run", test_data, strategy="scratch", spatial_dims=2, in_channels=3,
                   manifest="colour_lesions", data_root=data)
    bundle = export_bundle(run, tmp_path / "colour_bundle", manifest=manifest, torchscript=True)
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["network_def"]["in_channels"] == 3
    steps = {step["_target_"]: step for step in inference["preprocessing"]["transforms"]}
    assert steps["scripts.checks.ValidateCased"]["channels"] == 3
    assert steps["monai.transforms.ScaleIntensityRangePercentilesd"]["channel_wise"] is True
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 3
    assert "Input: 3 channels" in meta["description"] and "3 channels" in (bundle / "docs" / "README.md").read_text()
    assert meta["exports"]["torchscript"]["same_mask"] is True
    assert load_bundle(bundle).network(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)

    work = tmp_path / "collaborator"
    shutil.copytree(bundle, work / "bundle")
    (work / "scans").mkdir()
    shutil.copy(data / "images" / "c0.png", work / "scans")
    _plain_monai_run(work)
    segment(bundle, work / "scans", tmp_path / "segmented", progress=False, precision="fp32")
    plain, ours = nib.load(work / "masks" / "c0_seg.nii.gz"), nib.load(tmp_path / "segmented" / "c0_seg.nii.gz")
    assert np.asarray(ours.dataobj).shape == (90, 70)  # one mask channel, the image's own grid
    assert np.array_equal(np.asarray(plain.dataobj), np.asarray(ours.dataobj))

    grey = tmp_path / "grey" / "scan.png"
    grey.parent.mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(grey)
    [result] = segment(bundle, grey, tmp_path / "grey_out", progress=False)  # a failed scan; the others would go on
    assert result.status == "failed" and result.output_nifti is None
    assert "scan.png" in result.error and "expected 3 channels, got 1 channel(s)" in result.error, result.error


def test_a_bundle_whose_network_and_chain_disagree_on_channels_is_refused(tmp_path, test_data):
    from medtransfer.inference.bundle_loading import BundleError, load_bundle

    data = tmp_path / "colour"
    manifest = _rgb_data(data)
    run = make_run(tmp_path / "run", test_data, strategy="scratch", spatial_dims=2, in_channels=3,
                   manifest="colour_lesions", data_root=data)
    bundle = export_bundle(run, tmp_path / "b", manifest=manifest)
    path = bundle / "configs" / "inference.json"
    inference = json.loads(path.read_text())
    inference["network_def"]["in_channels"] = 1
    path.write_text(json.dumps(inference))
    with pytest.raises(BundleError, match="checks for 3 input channel.*network_def takes 1"):
        load_bundle(bundle)
