"""`parts(model)` splits every network into encoder / decoder / head, completely and without aliases."""

import pytest
import torch

from medtransfer.networks import build_dynunet, build_resnet_unet, count_parameters, part_regex, parts, state_tensors


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_dynunet_parts_cover_every_tensor_once_without_skip_layer_aliases(spatial_dims):
    model = build_dynunet(spatial_dims, filters=(8, 16, 32))
    split = parts(model)
    names = [name for part in split.values() for name in part]
    assert len(names) == len(set(names))
    assert set(names) == set(state_tensors(model))
    assert not any(name.startswith("skip_layers") for name in names)
    # the state dict repeats modules under skip_layers.*: parts must not count them twice
    assert len(model.state_dict()) > len(names)
    assert all(n.split(".")[0] in {"input_block", "downsamples", "bottleneck"} for n in split["encoder"])
    assert all(n.split(".")[0] == "upsamples" for n in split["decoder"])
    assert {n.split(".")[0] for n in split["head"]} == {"output_block"}


def test_dynunet_alias_keys_point_to_the_same_tensors_as_the_part_names():
    model = build_dynunet(2, filters=(8, 16, 32))
    state = model.state_dict()
    tensors = state_tensors(model)
    aliased = [k for k in state if k.startswith("skip_layers")]
    assert aliased
    for key in aliased:
        assert any(state[key].data_ptr() == t.data_ptr() for t in tensors.values())


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_resnet_unet_parts(spatial_dims):
    model = build_resnet_unet(spatial_dims, backbone="resnet10")
    split = parts(model)
    assert all(n.startswith("encoder.") for n in split["encoder"])
    assert all(n.startswith("decoder.") for n in split["decoder"])
    assert all(n.startswith("segmentation_head.") for n in split["head"])
    assert any("running_mean" in n for n in split["encoder"])  # BatchNorm statistics travel with their part
    assert set(n for p in split.values() for n in p) == set(model.state_dict())


def test_parameter_counts_add_up():
    model = build_dynunet(3)
    counts = count_parameters(model)
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    assert counts["encoder"] > counts["decoder"] > counts["head"] > 0


def test_part_regex_selects_exactly_the_part_in_the_state_dict():
    import re

    model = build_dynunet(2, filters=(8, 16, 32))
    pattern = re.compile(part_regex(model, "encoder"))
    selected = {k for k in state_tensors(model) if pattern.search(k)}
    assert selected == set(parts(model)["encoder"])


def test_unknown_network_is_an_error():
    with pytest.raises(TypeError, match="no known encoder/decoder/head split"):
        parts(torch.nn.Conv2d(1, 1, 3))


def test_builders_validate_arguments_and_run_forward():
    with pytest.raises(ValueError, match="spatial_dims"):
        build_dynunet(4)
    with pytest.raises(ValueError, match="ResNet"):
        build_resnet_unet(2, backbone="efficientnet-b0")
    out = build_dynunet(2, filters=(8, 16, 32))(torch.zeros(1, 1, 32, 32))
    assert out.shape == (1, 2, 32, 32)
