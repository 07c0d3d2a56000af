"""Safe loading of shared bundles: only the allow-listed network and transforms, checked weights, --trusted.

The helpers here (a finished tiny run, its exported bundle) are shared with test_export.py and test_segment.py.
The run is made with medtransfer's own RunDirectory and a freshly initialised tiny DynUNet (not trained: these
tests are about loading, geometry and safety, not accuracy); its run.json has the fields RunRecord writes.
"""

import importlib.util
import json
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import pytest
import torch
from monai.networks.nets import DynUNet

from medtransfer.atomic import save_json, save_torch, sha256_of
from medtransfer.inference.bundle_loading import (
    BundleError,
    UntrustedBundleError,
    check_bundle_weights,
    load_bundle,
    load_model,
)
from medtransfer.inference.bundle_verify import verify_bundle
from medtransfer.inference.segment import segment
from medtransfer.networks import build_dynunet
from medtransfer.training.run_directory import RunDirectory
from tests.conftest import REPO_ROOT

TINY_FILTERS = [8, 16, 32]
TINY_PATCH = [32, 32, 32]
COARSE_SPACING = [3.0, 3.0, 3.0]  # keeps 512x512 CT series small for the network in tests


TINY_PATCH_2D = [64, 64]


def make_run(
    folder: Path, test_data: Path, strategy: str = "encoder", status: str = "finished",
    source_checkpoint: str = "/somewhere/pretrain/contrastive_epoch10.pt", task: str = "segmentation",
    spatial_dims: int = 3, in_channels: int = 1, manifest: str | None = None, data_root: Path | None = None,
    init_seed: int = 0, backbone: str | None = None, source_network=None, patch_size: list[int] | None = None,
) -> Path:
    """A finished run shaped like train.yaml + RunRecord leave it: 3D on msd_hippocampus, 2D on hc18_fetal_head
    (or on ``manifest`` under ``data_root``, with a network of ``in_channels``). The network: a tiny DynUNet
    (initialised with ``init_seed``), a ResNet-encoder U-Net (``backbone``), or a source architecture
    (``source_network``: a mapping, or ``auto`` with ``source_checkpoint`` naming a MONAI UNet's weights)."""
    from medtransfer.networks import build_resnet_unet
    from medtransfer.transfer.source_network import build_run_network

    folder.mkdir(parents=True, exist_ok=True)
    if backbone:
        network = build_resnet_unet(spatial_dims, in_channels=in_channels, backbone=backbone, init_seed=init_seed)
    elif source_network:
        network = build_run_network(spatial_dims, init_seed=init_seed, source_network=source_network,
                                    source_checkpoint=source_checkpoint, in_channels=in_channels)
    else:
        network = build_dynunet(spatial_dims, in_channels=in_channels, filters=TINY_FILTERS, init_seed=init_seed)
    save_torch(folder / "model.pt", {k: v.detach().clone() for k, v in network.state_dict().items()})
    manifest = manifest or ("msd_hippocampus" if spatial_dims == 3 else "hc18_fetal_head")
    run_params = {
        "bundle": f"binary_seg_{spatial_dims}d", "task": task, "data_manifest": manifest,
        "data_root": str(data_root or test_data / manifest), "fraction": 0.1, "seed": 3, "max_epochs": 2,
        "iterations_per_epoch": 2, "batch_size": 1, "num_samples": 1, "learning_rate": 0.003,
        "patch_size": patch_size or (TINY_PATCH if spatial_dims == 3 else TINY_PATCH_2D), "filters": TINY_FILTERS,
        "spatial_dims": spatial_dims, "strategy": strategy,
        "source_checkpoint": source_checkpoint if strategy != "scratch" else None,
        "unfreeze_epoch": None, "transferred_lr_scale": 1.0,
    }
    if backbone:
        run_params["backbone"] = backbone
    if source_network:
        run_params["source_network"] = source_network
    run = RunDirectory(folder, run_params).prepare()
    run.write_record({
        "status": status,
        "finished_at": "2026-01-01T00:00:00",
        "data": {"manifest": manifest, "fraction": 0.1, "n_training": 19, "n_validation": 26, "n_test": 52},
        "metrics": {"mean_dice": 0.71, "mean_hd95": 3.5, "mean_surface_dice": 0.8, "n_test_cases": 52},
        "best_epoch": 2, "best_val_dice": 0.7, "epochs": 2, "iterations": 4,
        "model_sha256": sha256_of(folder / "model.pt"),
        "transfer": {
            "strategy": strategy, "loaded_parts": ["encoder"], "frozen_parts": [],
            "source_checkpoint": run_params["source_checkpoint"], "checkpoint_format": "medtransfer",
            "checkpoint_sha256": "ab" * 32, "head_reinitialised": False,
        },
    })
    save_json(folder / "transfer.json", {"strategy": strategy, "checkpoint_meta": {"objective": "contrastive", "epoch": 10}})
    return folder


def coarse_manifest(folder: Path) -> Path:
    """msd_hippocampus with a target_spacing, so that export / segment resample (and tests stay fast)."""
    content = json.loads((REPO_ROOT / "data_manifests" / "msd_hippocampus.json").read_text())
    content["target_spacing"] = COARSE_SPACING
    path = folder / "msd_hippocampus_coarse.json"
    path.write_text(json.dumps(content))
    return path


def make_bundle(tmp: Path, test_data: Path, **export_options) -> Path:
    from medtransfer.inference.export import export_bundle

    run = make_run(tmp / "run", test_data)
    return export_bundle(run, tmp / "bundle", manifest=coarse_manifest(tmp), **export_options)


def copy_bundle(bundle: Path, target: Path) -> Path:
    shutil.copytree(bundle, target)
    return target


def edit_config(bundle: Path, change) -> None:
    path = bundle / "configs" / "inference.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def _via_reference(config, marker):
    config["network_def"]["filters"] = "@filters"
    config["filters"] = _expression(marker)


def _insert_step(config, marker):
    config["preprocessing"]["transforms"].insert(3, {"_target_": "scripts.transforms.Spy", "keys": ["image"]})


def _change_percentile(config, marker):
    config["preprocessing"]["transforms"][-2]["upper"] = 99.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, test_data):
    return make_bundle(tmp_path_factory.mktemp("loading"), test_data)


def test_exported_bundle_loads_in_safe_mode_without_evaluating_its_config(bundle, tmp_path):
    marker = tmp_path / "evaluated"
    copy = copy_bundle(bundle, tmp_path / "b")
    # Keys that safe mode ignores may hold anything: they are never evaluated.
    edit_config(copy, lambda c: c.update(device=f"$__import__('pathlib').Path({str(marker)!r}).touch()"))
    model = load_bundle(copy)
    assert isinstance(model.network, DynUNet) and not model.network.training
    assert model.spatial_dims == 3 and model.roi_size == TINY_PATCH
    assert (model.sw_batch_size, model.overlap) == (4, 0.25)
    assert model.label_name == "hippocampus"
    spacing = [t for t in model.preprocessing.transforms if type(t).__name__ == "Spacingd"]
    assert spacing and list(spacing[0].spacing_transform.pixdim) == COARSE_SPACING
    assert not marker.exists()
    reference = torch.load(copy / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(v, reference[k]) for k, v in model.network.state_dict().items())


def _expression(marker):
    return f"$__import__('pathlib').Path({str(marker)!r}).touch()"


@pytest.mark.parametrize(
    "case, change, shown",
    [
        ("expression argument", lambda c, m: c["network_def"].update(spatial_dims=_expression(m)), "network_def::spatial_dims"),
        ("expression via reference", _via_reference, "network_def::filters -> filters"),
        ("extra preprocessing step", _insert_step, "preprocessing::transforms[3] = {'_target_': 'scripts.transforms.Spy'"),
        ("other normalisation", _change_percentile, "preprocessing::transforms[5]"),
        ("other post-processing chain", lambda c, m: c["postprocessing"]["transforms"].pop(0),
         "postprocessing: a Compose other than medtransfer's standard chain"),
        ("custom network code", lambda c, m: c["network_def"].update(_target_="scripts.net.MyUNet"), "scripts.net.MyUNet"),
        ("custom preprocessing", lambda c, m: c.update(preprocessing={"_target_": "scripts.transforms.chain"}),
         "preprocessing::_target_ = 'scripts.transforms.chain'"),
        ("network as an expression", lambda c, m: c.update(network_def=_expression(m)), "network_def = "),
        ("config directive", lambda c, m: c["network_def"].update(_requires_=_expression(m)), "network_def::_requires_"),
        ("downloading network", lambda c, m: c.update(network_def={
            "_target_": "FlexibleUNet", "in_channels": 1, "out_channels": 2, "backbone": "resnet18",
            "spatial_dims": 3, "pretrained": True}), "pretrained = true"),
        ("custom postprocessing", lambda c, m: c["postprocessing"].update(_target_="scripts.post.keep_largest"),
         "scripts.post.keep_largest"),
    ],
)
def test_safe_mode_refuses_what_the_allow_list_does_not_cover(bundle, tmp_path, case, change, shown):
    marker = tmp_path / "evaluated"
    copy = copy_bundle(bundle, tmp_path / "b")
    edit_config(copy, lambda c: change(c, marker))
    with pytest.raises(UntrustedBundleError) as refused:
        load_bundle(copy)
    message = str(refused.value)
    assert shown in message and "--trusted" in message and str(copy) in message
    report = verify_bundle(copy)  # verifying an untrusted bundle executes none of it either
    assert not report["ok"] and "--trusted" in report["checks"]["safe_config"]
    assert not marker.exists()


def test_trusted_mode_evaluates_the_config_with_monai(bundle, test_data, tmp_path):
    marker = tmp_path / "evaluated"
    copy = copy_bundle(bundle, tmp_path / "b")
    edit_config(copy, lambda c: c.update(
        network_def=f"$(__import__('pathlib').Path({str(marker)!r}).touch(), __import__('medtransfer.networks', "
                    f"fromlist=['x']).build_dynunet(3, filters={TINY_FILTERS}))[1]",
    ))
    with pytest.raises(UntrustedBundleError, match="a Python expression"):
        load_bundle(copy)
    assert not marker.exists()
    model = load_bundle(copy, trusted=True)
    assert marker.exists() and isinstance(model.network, DynUNet) and model.inferer is not None
    assert verify_bundle(copy, trusted=True)["ok"]
    scan = test_data / "msd_hippocampus" / "images" / "hippocampus_001.nii.gz"
    result = segment(copy, scan, tmp_path / "out", trusted=True, progress=False)[0]
    assert result.ok and nib.load(result.output_nifti).shape == nib.load(scan).shape


def test_changed_weights_are_refused_by_checksum(bundle, tmp_path):
    copy = copy_bundle(bundle, tmp_path / "b")
    state = torch.load(copy / "models" / "model.pt", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 0.01
    torch.save(state, copy / "models" / "model.pt")
    for trusted in (False, True):
        with pytest.raises(BundleError, match=r"model\.pt: sha256 .* does not match .* refusing to use it"):
            load_bundle(copy, trusted=trusted)
    with pytest.raises(BundleError, match="does not match"):
        check_bundle_weights(copy, copy / "models" / "model.pt")  # what earlier exported configs run first
    spec = importlib.util.spec_from_file_location("bundle_integrity_copy", copy / "scripts" / "integrity.py")
    integrity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(integrity)  # the bundle's own copy, what configs/inference.json runs first
    with pytest.raises(ValueError, match=r"model\.pt: sha256 .* does not match"):
        integrity.check_weights(str(copy), str(copy / "models" / "model.pt"))
    assert integrity.check_weights(str(bundle), str(bundle / "models" / "model.pt")) == sha256_of(
        bundle / "models" / "model.pt")
    assert "does not match" in verify_bundle(copy)["checks"]["weights_sha256"]


class _Payload:
    """A pickle that runs code when unpickled: what weights_only loading must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_weights_holding_pickled_objects_are_refused_unexecuted(bundle, tmp_path):
    marker = tmp_path / "unpickled"
    copy = copy_bundle(bundle, tmp_path / "b")
    weights = copy / "models" / "model.pt"
    torch.save({"input_block.conv1.conv.weight": _Payload(marker)}, weights)
    meta_path = copy / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["files_sha256"]["models/model.pt"] = sha256_of(weights)  # a consistent checksum: only weights_only stops it
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"model\.pt: not a loadable weights file .*pickled objects"):
        load_bundle(copy)
    assert "pickled objects" in verify_bundle(copy)["checks"]["weights_only"]
    assert not marker.exists()


def test_a_bundle_without_weight_checksum_needs_trusted(bundle, tmp_path, caplog):
    copy = copy_bundle(bundle, tmp_path / "b")
    meta_path = copy / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["files_sha256"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"lists no sha256 for models/model\.pt .*--trusted"):
        load_bundle(copy)
    assert load_bundle(copy, trusted=True) is not None
    assert "lists no sha256" in caplog.text


def test_zip_bundles_load_and_zip_slip_is_refused(bundle, tmp_path):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in bundle.rglob("*"):
            if path.is_file():
                zipped.write(path, f"my_bundle/{path.relative_to(bundle)}")
    assert isinstance(load_model(archive).network, DynUNet)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zipped:
        zipped.writestr("../outside.txt", "x")
    with pytest.raises(BundleError, match="outside the folder"):
        load_model(evil)
    assert not (tmp_path / "outside.txt").exists()


def test_run_folders_load_only_when_finished(tmp_path, test_data):
    run = make_run(tmp_path / "run", test_data, strategy="scratch")
    model = load_model(run)
    assert model.roi_size == TINY_PATCH and model.label_name.startswith("hippocampus")
    assert not [t for t in model.preprocessing.transforms if type(t).__name__ == "Spacingd"]  # manifest: none
    unfinished = make_run(tmp_path / "unfinished", test_data, status="running")
    with pytest.raises(BundleError, match="not finished"):
        load_model(unfinished)
    with pytest.raises(BundleError, match="neither a MONAI bundle"):
        load_model(tmp_path)
