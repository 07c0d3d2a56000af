"""evaluate.yaml and inference.yaml on a trained run; `medtransfer bundle verify`; 2D/3D configs in step."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import yaml

from medtransfer.cli import main as cli
from medtransfer.inference.bundle_verify import verify_bundle
from tests.bundles.conftest import TINY, bundle_dir, run_workflow


@pytest.fixture(scope="module")
def trained_2d(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    monkey = pytest.MonkeyPatch()
    monkey.setenv("MEDTRANSFER_HOME", str(home))
    output = tmp_path_factory.mktemp("run2d")
    run_workflow(2, output_dir=str(output), overwrite=True, **{**TINY[2], "max_epochs": 1})
    yield output
    monkey.undo()


def test_evaluate_overlay_writes_per_case_summary_matching_the_run(trained_2d):
    run_workflow(2, configs=("train.yaml", "evaluate.yaml"), output_dir=str(trained_2d), **{**TINY[2], "max_epochs": 1})
    summary = json.loads((trained_2d / "evaluation_test" / "summary.json").read_text())
    record = json.loads((trained_2d / "run.json").read_text())
    assert summary["n_cases"] == record["metrics"]["n_test_cases"]
    assert summary["mean"]["dice"] == pytest.approx(record["metrics"]["mean_dice"], abs=1e-6)
    run_workflow(2, configs=("train.yaml", "evaluate.yaml"), output_dir=str(trained_2d), eval_split="validation",
                 **{**TINY[2], "max_epochs": 1})
    assert json.loads((trained_2d / "evaluation_validation" / "summary.json").read_text())["n_cases"] == 6


def test_inference_writes_masks_in_the_input_geometry(trained_2d, tmp_path):
    manifest = json.loads((bundle_dir(2).parents[1] / "data_manifests" / "synthetic_2d.json").read_text())
    record = json.loads((trained_2d / "run.json").read_text())
    source = tmp_path / "in"
    source.mkdir()
    for case in manifest["test"][:2]:
        shutil.copy(f"{record['config']['data_root']}/{case['image']}", source)
    # one image with a non-trivial affine (spacing and offset) must come back on the same grid
    image = nib.load(next(source.iterdir()))
    affine = np.diag([0.7, 1.3, 1.0, 1.0])
    affine[:2, 3] = [10.0, -5.0]
    nib.save(nib.Nifti1Image(image.get_fdata().astype(np.float32), affine), source / "shifted.nii.gz")
    out = tmp_path / "out"
    run_workflow(2, configs=("inference.yaml",), workflow_type="infer", checkpoint=str(trained_2d / "model.pt"),
                 input_dir=str(source), output_dir=str(out), patch_size=TINY[2]["patch_size"],
                 filters=TINY[2]["filters"])
    for scan in source.iterdir():
        mask = nib.load(out / scan.name.replace(".nii.gz", "_seg.nii.gz"))
        original = nib.load(scan)
        assert mask.shape == original.shape
        assert np.allclose(mask.affine, original.affine, atol=1e-5)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1} and mask.get_data_dtype() == np.uint8


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_bundle_verify_passes_offline(spatial_dims, capsys):
    assert cli(["bundle", "verify", str(bundle_dir(spatial_dims))]) == 0
    assert '"ok": true' in capsys.readouterr().out
    report = verify_bundle(bundle_dir(spatial_dims))
    assert report["ok"] and set(report["checks"]) == {"files", "verify_metadata", "verify_net_in_out"}


def test_bundle_verify_catches_bad_metadata_and_a_wrong_output_channel_count(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir(2), bundle, ignore=shutil.ignore_patterns("eval", "runs"))
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["required_packages_version"]
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 3
    meta_path.write_text(json.dumps(meta))
    report = verify_bundle(bundle)
    assert not report["ok"]
    assert "required_packages_version" in report["checks"]["verify_metadata"]
    assert report["checks"]["verify_net_in_out"] != "passed"


def _top_level(path):
    return yaml.safe_load(path.read_text())


def _config_files(spatial_dims):
    configs = bundle_dir(spatial_dims) / "configs"
    return sorted(str(path.relative_to(configs)) for path in configs.rglob("*.yaml"))


def test_2d_and_3d_bundles_have_the_same_config_files():
    assert _config_files(2) == _config_files(3)
    assert {"train.yaml", "pretrain.yaml", "multi_gpu_train.yaml", "transfer/encoder.yaml"} <= set(_config_files(2))


@pytest.mark.parametrize("name", _config_files(2))
def test_2d_and_3d_bundles_differ_only_in_their_dimension_settings(name):
    """The two bundles are the same wiring, overlays included; only these values may differ (logic lives in
    medtransfer/)."""
    allowed = {"bundle_name", "spatial_dims", "output_dir", "data_manifest", "batch_size", "patch_size", "filters"}
    two, three = (_top_level(bundle_dir(d) / "configs" / name) for d in (2, 3))
    assert set(two) == set(three)
    assert {key for key in two if two[key] != three[key]} <= allowed
