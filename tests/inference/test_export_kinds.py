"""`medtransfer export` of every kind of model a user trains: an ensemble of seeds, the ResNet-encoder U-Net and
the source architectures of `--source_network` (MONAI UNet from `auto`, SegResNet, SwinUNETR).

For each kind the standalone guarantees of a single DynUNet bundle hold: plain `python -m monai.bundle run` with
medtransfer blocked gives `segment`'s mask, the Model Zoo's CI passes (5/5 where the network can be scripted),
and `models/model.ts` loads and gives the PyTorch model's mask. The runs are tiny, untrained networks (see
test_bundle_loading.make_run): these tests are about export, not accuracy.
"""

import json
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from medtransfer.atomic import save_torch
from medtransfer.inference.bundle_loading import load_bundle
from medtransfer.inference.export import EnsembleMemberError, export_bundle
from medtransfer.inference.segment import segment
from tests.conftest import REPO_ROOT
from tests.inference.test_bundle_loading import make_run
from tests.inference.test_export import (
    _scans,
    _without_medtransfer,
    _zoo_checks,
    plain_monai_equals_segment,
)

ENSEMBLE_TARGET = "scripts.networks.ProbabilityEnsemble"


def _zoo(bundle, test_data, tmp_path) -> list[str]:
    return _zoo_checks([bundle], test_data, tmp_path, _without_medtransfer(tmp_path))[bundle.name]


def _torchscript_equals(bundle, shape) -> None:
    """model.ts loads, carries its configs, and gives the PyTorch model's output on a seeded probe."""
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"), map_location="cpu")
    model = load_bundle(bundle)
    probe = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(scripted(probe), model.network(probe), atol=1e-5)
    with zipfile.ZipFile(bundle / "models" / "model.ts") as archive:
        extras = {n.rsplit("/", 1)[-1] for n in archive.namelist() if "/extra/" in n}
    assert {"metadata.json", "inference.json"} <= extras
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["exports"]["torchscript"]["same_mask"] is True


@pytest.fixture(scope="module")
def seeds(tmp_path_factory, test_data):
    """Three 3D runs of one cell, different seeds (different weights)."""
    folder = tmp_path_factory.mktemp("seeds")
    return [make_run(folder / f"seed{seed}", test_data, init_seed=seed) for seed in range(3)]


def _one_scan(test_data, work, name="hippocampus_001.nii.gz"):
    (work / "scans").mkdir(parents=True)
    (work / "scans" / name).write_bytes((test_data / "msd_hippocampus" / "images" / name).read_bytes())
    return work / "scans"


def _all_pass(lines: list[str], expected: int = 5) -> bool:
    return len(lines) == 5 and sum(line.startswith("PASS") for line in lines) == expected


def test_an_ensemble_of_three_runs_exports_as_one_bundle_that_averages_like_segment(seeds, test_data, tmp_path):
    bundle = export_bundle(seeds, tmp_path / "ensemble", torchscript=True)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert config["network_def"]["_target_"] == ENSEMBLE_TARGET and len(config["network_def"]["members"]) == 3
    assert all(m["_target_"] == "monai.networks.nets.DynUNet" for m in config["network_def"]["members"])
    assert config["inferer"]["_target_"] == "scripts.networks.EnsembleSlidingWindowInferer"
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert {k.split(".", 2)[1] for k in weights} == {"0", "1", "2"}
    for index, run in enumerate(seeds):  # each member holds its own run's tensors
        own = torch.load(run / "model.pt", weights_only=True)
        assert all(torch.equal(weights[f"members.{index}.{k}"], v) for k, v in own.items())
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert [m["run_folder"] for m in meta["provenance"]["ensemble"]] == ["seed0", "seed1", "seed2"]
    assert meta["eval_metrics"]["mean_dice"] is None  # the ensemble itself was never evaluated
    assert "Ensemble members" in (bundle / "docs" / "README.md").read_text()
    _torchscript_equals(bundle, [32, 32, 32])

    # plain MONAI on the bundle == `segment RUN_A RUN_B RUN_C` on the runs themselves == `segment BUNDLE`
    work = tmp_path / "collaborator"
    assert plain_monai_equals_segment(bundle, _one_scan(test_data, work), work, models=seeds) > 0
    segment(bundle, work / "scans", work / "bundle_segmented", progress=False, precision="fp32")
    name = "hippocampus_001_seg.nii.gz"
    assert np.array_equal(np.asarray(nib.load(work / "bundle_segmented" / name).dataobj),
                          np.asarray(nib.load(work / "masks" / name).dataobj))
    # a single member's mask differs: the bundle really averages
    segment(seeds[0], work / "scans", work / "member0", progress=False, precision="fp32")
    assert not np.array_equal(np.asarray(nib.load(work / "member0" / name).dataobj),
                              np.asarray(nib.load(work / "masks" / name).dataobj))
    assert _all_pass(_zoo(bundle, test_data, tmp_path))


def _manifest(folder, name, **changes):
    content = json.loads((REPO_ROOT / "data_manifests" / "msd_hippocampus.json").read_text())
    content.update(changes)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize("field, change, run_change", [
    ("label meaning", {"label_meaning": {"0": "background", "1": "amygdala"}}, {}),
    ("target spacing", {"target_spacing": [2.0, 2.0, 2.0]}, {}),
    ("input channels", {"channels": 2}, {"in_channels": 2}),
    ("patch size", {}, {"patch_size": [16, 16, 16]}),
])
def test_ensemble_members_that_disagree_are_refused_naming_the_member_and_the_field(
        seeds, test_data, tmp_path, field, change, run_change):
    other = make_run(tmp_path / "odd_member", test_data, manifest=str(_manifest(tmp_path, "odd", **change)),
                     data_root=test_data / "msd_hippocampus", **run_change)
    with pytest.raises(EnsembleMemberError, match=f"odd_member: {field} .* differs from .* of .*seed0"):
        export_bundle([seeds[0], other], tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_an_ensemble_of_two_architecture_families_is_refused(seeds, test_data, tmp_path):
    other = make_run(tmp_path / "resnet_member", test_data, backbone="resnet10", patch_size=[32, 32, 32])
    with pytest.raises(EnsembleMemberError, match="resnet_member: architecture family 'scripts.networks.Scriptable"):
        export_bundle([seeds[0], other], tmp_path / "b")


def test_cli_export_takes_several_runs(seeds, tmp_path, capsys):
    from tests.inference.test_export import _cli

    assert _cli(["export", str(seeds[0]), str(seeds[1]), "--output", str(tmp_path / "pair")]) == 0
    assert "ensemble of 2 runs" in capsys.readouterr().out
    config = json.loads((tmp_path / "pair" / "configs" / "inference.json").read_text())
    assert len(config["network_def"]["members"]) == 2


def _unet_checkpoint(path):
    """A MONAI UNet's weights, as a public 2D checkpoint would come (3 classes; 1 residual unit shows the strides)."""
    network = UNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(8, 16, 32), strides=(2, 2),
                   num_res_units=1)
    save_torch(path, network.state_dict())
    return path


SEGRESNET = {"name": "SegResNet", "init_filters": 8, "blocks_down": [1, 2, 2], "blocks_up": [1, 1]}
SWIN = {"name": "SwinUNETR", "feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [3, 3, 3, 3]}
# kind: (make_run options, network_def _target_, Model Zoo checks that pass)
KINDS = {
    "resnet_encoder": ({"backbone": "resnet18"}, "scripts.networks.ScriptableFlexibleUNet", 5),
    "monai_unet_auto": ({"source_network": "auto"}, "monai.networks.nets.UNet", 5),
    "segresnet": ({"source_network": SEGRESNET}, "monai.networks.nets.SegResNet", 5),
    # SwinUNETR cannot be scripted: model.ts is a trace at the window size; the Zoo's ckpt_export scripts, so 4/5
    "swin_unetr": ({"source_network": SWIN}, "monai.networks.nets.SwinUNETR", 4),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_architecture_exports_a_standalone_bundle_that_agrees_with_segment(kind, test_data, tmp_path):
    options, target, zoo_passes = KINDS[kind]
    if options.get("source_network") == "auto":
        options = {**options, "source_checkpoint": str(_unet_checkpoint(tmp_path / "public_unet.pt"))}
    run = make_run(tmp_path / kind, test_data, spatial_dims=2, **options)
    bundle = export_bundle(run, tmp_path / f"{kind}_bundle", torchscript=True)
    definition = json.loads((bundle / "configs" / "inference.json").read_text())["network_def"]
    assert definition["_target_"] == target and definition["out_channels"] == 2
    if kind == "monai_unet_auto":  # the architecture read off the source's tensors, stated literally
        assert (definition["channels"], definition["strides"], definition["num_res_units"]) == ([8, 16, 32], [2, 2], 1)
    _torchscript_equals(bundle, [64, 64])
    work = tmp_path / "collaborator"
    work.mkdir()
    # plain MONAI on the bundle (medtransfer blocked) == `medtransfer segment RUN` on the run folder itself
    assert plain_monai_equals_segment(bundle, _scans(2, test_data, work), work, models=run) > 0
    lines = _zoo(bundle, test_data, tmp_path)
    assert _all_pass(lines, zoo_passes), lines
    if zoo_passes < 5:
        assert [line for line in lines if line.startswith("FAIL")][0].startswith("FAIL TorchScript"), lines
