"""evaluate.yaml and inference.yaml on a trained run; `medtransfer bundle verify`; 2D/3D configs in step."""

import json
import shutil
from pathlib import Path

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
    assert report["ok"] and set(report["checks"]) == {"files", "verify_metadata", "verify_net_in_out",
                                                      "config_expressions"}


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


def _reference(test_data):
    return test_data.parent / "reference"


def test_shipped_schema_is_monai_s_published_schema(test_data):
    """A loosened copy would pass what MONAI's check fails: the shipped file is the published one, byte for byte."""
    from medtransfer.inference.bundle_verify import SCHEMA_PATH, SCHEMA_URL

    assert SCHEMA_PATH.read_bytes() == (_reference(test_data) / "monai_meta_schema_20240725.json").read_bytes()
    assert json.loads(SCHEMA_PATH.read_text())["$schema"] == "https://json-schema.org/draft/2019-09/schema"
    for spatial_dims in (2, 3):
        assert json.loads((bundle_dir(spatial_dims) / "configs" / "metadata.json").read_text())["schema"] == SCHEMA_URL


def _set(meta, path, value):
    *parents, last = path
    for key in parents:
        meta = meta[key]
    if value is _DELETE:
        del meta[last]
    else:
        meta[last] = value


_DELETE = object()
_PRED = ("network_data_format", "outputs", "pred")
_IMAGE = ("network_data_format", "inputs", "image")
METADATA_CHANGES = {
    "unchanged": [],
    "null value_range": [(_PRED + ("value_range",), [None, None])],
    "string in value_range": [(_IMAGE + ("value_range",), ["0", 1])],
    "no version": [(("version",), _DELETE)],
    "version as a number": [(("version",), 1.0)],
    "no required_packages_version": [(("required_packages_version",), _DELETE)],
    "references not strings": [(("references",), [1])],
    "num_channels as text": [(_IMAGE + ("num_channels",), "1")],
    "float in spatial_shape": [(_IMAGE + ("spatial_shape",), [16.5, "32*n"])],
    "tensor without dtype": [(_PRED + ("dtype",), _DELETE)],
    "no outputs": [(("network_data_format", "outputs"), _DELETE)],
    "eval_metrics not an object": [(("eval_metrics",), [0.9])],
}


@pytest.mark.parametrize("change", sorted(METADATA_CHANGES))
def test_our_metadata_check_fails_exactly_where_monai_s_fails(change, test_data, tmp_path):
    """MONAI's own verify_metadata with the reference copy of the real schema is the judge."""
    from monai.bundle import verify_metadata

    meta = json.loads((bundle_dir(2) / "configs" / "metadata.json").read_text())
    for path, value in METADATA_CHANGES[change]:
        _set(meta, path, value)
    meta_file = tmp_path / "metadata.json"
    meta_file.write_text(json.dumps(meta))
    try:
        verify_metadata(meta_file=str(meta_file), filepath=str(_reference(test_data) / "monai_meta_schema_20240725.json"))
        monai_passes = True
    except Exception:
        monai_passes = False
    assert monai_passes == (change == "unchanged")  # every change above breaks the real schema

    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir(2), bundle)
    shutil.copyfile(meta_file, bundle / "configs" / "metadata.json")
    ours = verify_bundle(bundle)["checks"]["verify_metadata"]
    assert (ours == "passed") == monai_passes, ours


def test_bundle_verify_uses_the_schema_given(tmp_path, capsys):
    """--schema FILE replaces the shipped schema: a stricter one fails a bundle the real one passes."""
    from medtransfer.inference.bundle_verify import SCHEMA_PATH

    stricter = json.loads(SCHEMA_PATH.read_text())
    stricter["required"].append("medtransfer_extra_key")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(stricter))
    assert cli(["bundle", "verify", str(bundle_dir(2)), "--schema", str(schema)]) == 1
    assert "medtransfer_extra_key" in json.loads(capsys.readouterr().out)["checks"]["verify_metadata"]
    missing = verify_bundle(bundle_dir(2), schema=tmp_path / "missing.json")["checks"]["verify_metadata"]
    assert missing.startswith("FileNotFoundError") and "missing.json" in missing


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


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_inference_config_has_every_property_monai_checks(spatial_dims, test_data, tmp_path):
    """ConfigWorkflow(workflow_type="inference").check_properties(): dataset_dir and the rest, none missing."""
    import torch

    from medtransfer.networks import build_dynunet
    from tests.bundles.conftest import make_workflow

    checkpoint = tmp_path / "model.pt"
    torch.save(build_dynunet(spatial_dims, filters=TINY[spatial_dims]["filters"]).state_dict(), checkpoint)
    scans = tmp_path / "scans"
    scans.mkdir()
    scan = ("msd_hippocampus/images/hippocampus_001.nii.gz" if spatial_dims == 3 else
            "hc18_fetal_head/images/008_HC.png")
    shutil.copy(test_data / scan, scans)
    workflow = make_workflow(spatial_dims, configs=("inference.yaml",), workflow_type="inference",
                             checkpoint=str(checkpoint), filters=TINY[spatial_dims]["filters"], dataset_dir=str(scans))
    assert workflow.check_properties() == []
    assert workflow.dataset_dir == workflow.parser.get_parsed_content("input_dir") == str(scans)
    assert [item["image"] for item in workflow.dataset.data] == [str(scans / Path(scan).name)]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_train_config_has_every_required_property_and_dataset_dir_sets_the_data_root(spatial_dims, tmp_path,
                                                                                      medtransfer_home):
    """MONAI's required train properties are all there. ConfigWorkflow's optional-ID pass is not run: MONAI 1.6.1
    indexes every train#handlers entry as a dict and raises TypeError on reference entries ("@transfer")."""
    from monai.bundle.workflows import BundleWorkflow

    from tests.bundles.conftest import make_workflow

    data_root = tmp_path / "data"
    data_root.mkdir()
    workflow = make_workflow(spatial_dims, output_dir=str(tmp_path / "run"), **TINY[spatial_dims])
    assert BundleWorkflow.check_properties(workflow) == []  # MONAI's own list of required properties
    assert workflow.dataset_dir is None and workflow.parser.get_parsed_content("data_root") is None
    workflow = make_workflow(spatial_dims, output_dir=str(tmp_path / "run2"), dataset_dir=str(data_root),
                             **TINY[spatial_dims])
    assert workflow.parser.get_parsed_content("data_root") == str(data_root)


def _zoo_checks(bundle, test_data, folder):
    import subprocess
    import sys

    runner = _reference(test_data) / "model_zoo_ci" / "run_zoo_checks.py"
    completed = subprocess.run([sys.executable, str(runner), str(bundle),
                                str(_reference(test_data) / "monai_meta_schema_20240725.json")],
                               cwd=folder, capture_output=True, text=True, timeout=300)
    lines = [line.split(" ", 1) for line in completed.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    return {label.split(":")[0]: (verdict, label) for verdict, label in lines}


def test_repo_bundles_pass_the_model_zoo_ci_checks_that_need_no_weights(test_data, tmp_path):
    """The Zoo's ci/verify_bundle.py, unchanged: metadata, properties and shape pass; the repo holds no weights."""
    for spatial_dims in (2, 3):
        results = _zoo_checks(bundle_dir(spatial_dims), test_data, tmp_path)
        verdicts = {name: verdict for name, (verdict, _) in results.items()}
        assert verdicts == {
            "directory (necessary + preferred files)": "FAIL",  # models/model.pt: no trained weights in git
            "metadata against the real schema": "PASS",
            "bundle properties (ConfigWorkflow)": "PASS",
            "network in/out shape (MONAI defaults)": "PASS",
            "TorchScript export + load": "FAIL",  # needs models/model.pt
        }, results
