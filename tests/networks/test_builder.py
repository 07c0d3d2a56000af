"""`source_network` descriptions: allow-listed literal mappings and a source bundle's network_def read as data."""

import json

import pytest
import torch
import yaml
from monai.networks.nets import BasicUNet, DynUNet, SegResNet, UNet

from medtransfer.networks import (
    NetworkSpecError,
    architecture_from_bundle,
    build_network,
    check_architecture,
    parts,
)


def test_no_architecture_is_medtransfers_dynunet_as_before():
    network = build_network(2, filters=(8, 16, 32), init_seed=3)
    assert isinstance(network, DynUNet) and list(network.filters) == [8, 16, 32]


@pytest.mark.parametrize(("spec", "cls"), [
    ({"name": "UNet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 2, "norm": "batch",
      "dropout": 0.3}, UNet),
    ({"name": "BasicUNet", "features": [4, 4, 8, 8, 16, 4], "dropout": 0.3}, BasicUNet),
    ({"name": "SegResNet", "init_filters": 4, "norm": ["group", {"num_groups": 2}], "dropout_prob": 0.3}, SegResNet),
])
def test_literal_mapping_builds_the_monai_class_with_a_binary_head(spec, cls):
    network = build_network(2, init_seed=0, architecture={**spec, "out_channels": 5})
    assert isinstance(network, cls)
    assert all(parts(network).values())
    # the source's class count (5) is replaced by the target's 2, and its dropout (a training choice) left out
    assert network.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in network.modules())


def test_same_seed_same_initialisation():
    spec = {"name": "UNet", "channels": [4, 8], "strides": [2]}
    a, b = build_network(2, init_seed=7, architecture=spec), build_network(2, init_seed=7, architecture=spec)
    assert all((a.state_dict()[k] == b.state_dict()[k]).all() for k in a.state_dict())


@pytest.mark.parametrize(("spec", "message"), [
    ({"name": "Generator", "channels": [4]}, "GAN generator.*not a segmentation network"),
    ({"name": "os.system", "command": "rm"}, "not one of the allowed networks"),
    ({"name": "UNet", "channels": "$list(range(4))", "strides": [2]}, "channels="),
    ({"name": "UNet", "channels": [4, 8], "strides": [2], "act": "$torch.nn.ReLU"}, "act="),
    ({"name": "UNet", "channels": [4, 8], "strides": [2], "_target_": "os.system"}, "not an allowed argument"),
    ({"name": "UNet", "channels": [4, 8], "strides": [2], "spatial_dims": 4}, "spatial_dims=4"),
    (["UNet"], "expected a mapping"),
])
def test_descriptions_outside_the_allow_list_are_refused(spec, message):
    with pytest.raises(NetworkSpecError, match=message):
        check_architecture(spec)


def test_a_3d_source_is_refused_by_a_2d_bundle():
    with pytest.raises(NetworkSpecError, match="3D but this bundle trains a 2D network"):
        build_network(2, architecture={"name": "UNet", "spatial_dims": 3, "channels": [4, 8], "strides": [2]})


def _bundle(tmp_path, network_def, **top) -> str:
    configs = tmp_path / "bundle" / "configs"
    configs.mkdir(parents=True)
    (configs / "inference.json").write_text(json.dumps({"imports": ["$import os"], **top, "network_def": network_def}))
    return str(tmp_path / "bundle")


def test_source_bundle_network_def_is_read_as_data_following_literal_references(tmp_path):
    bundle = _bundle(tmp_path, {"_target_": "monai.networks.nets.UNet", "spatial_dims": "@dims", "in_channels": 1,
                                "out_channels": 14, "channels": "@widths", "strides": [2, 2], "num_res_units": 2},
                     dims=2, widths=[4, 8, 16], device="$torch.device('cpu')")
    spec = architecture_from_bundle(bundle)
    assert spec == {"name": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 14, "channels": [4, 8, 16],
                    "strides": [2, 2], "num_res_units": 2}
    assert isinstance(build_network(2, architecture=spec), UNet)


def test_source_bundle_expressions_are_refused_not_evaluated(tmp_path):
    marker = tmp_path / "ran"
    bundle = _bundle(tmp_path, {"_target_": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                                "channels": f"$open({str(marker)!r}, 'w') and [4, 8]", "strides": [2]})
    with pytest.raises(NetworkSpecError, match="is an expression: medtransfer reads network_def as data only"):
        architecture_from_bundle(bundle)
    assert not marker.exists()


def test_source_bundle_yaml_train_config_and_unknown_target(tmp_path):
    configs = tmp_path / "b" / "configs"
    configs.mkdir(parents=True)
    (configs / "train.yaml").write_text(yaml.safe_dump({"network_def": {"_target_": "scripts.net.MyNet"}}))
    with pytest.raises(NetworkSpecError, match="'scripts.net.MyNet'"):
        architecture_from_bundle(tmp_path / "b")
    with pytest.raises(NetworkSpecError, match="not a MONAI bundle folder"):
        architecture_from_bundle(tmp_path)
