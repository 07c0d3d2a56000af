"""Tests for layer naming, forward-hook feature recording and feature interpolation at label pixels."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medtransfer.analysis.features import FeatureRecorder, encoder_levels, interpolate_at, layer_names
from medtransfer.networks.unets import build_dynunet, build_resnet_unet

DYNUNET_ENCODER = ["input_block", "downsamples.0", "downsamples.1", "bottleneck"]
DYNUNET_DECODER = ["upsamples.0", "upsamples.1", "upsamples.2"]


class TwoLevelNet(nn.Module):
    """A module of our own that declares its split with a `part_table`."""

    part_table = {"input_block": "encoder", "bottleneck": "encoder", "output_block": "head"}

    def __init__(self) -> None:
        super().__init__()
        self.input_block = nn.Conv2d(1, 4, 3, padding=1)
        self.bottleneck = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.output_block = nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_block(self.bottleneck(self.input_block(x)))


def _hook_count(model: nn.Module) -> int:
    return sum(len(module._forward_hooks) for module in model.modules())


def _call_order(model: nn.Module, names: list[str], x: torch.Tensor) -> list[str]:
    """The order in which the named modules run in a forward pass."""
    calls = []
    handles = [
        model.get_submodule(name).register_forward_hook(lambda *_, name=name: calls.append(name)) for name in names
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def test_dynunet_layer_names_by_group():
    model = build_dynunet(2)
    assert layer_names(model, "encoder") == DYNUNET_ENCODER
    assert layer_names(model, "decoder") == DYNUNET_DECODER
    assert layer_names(model, "all") == DYNUNET_ENCODER + DYNUNET_DECODER + ["output_block"]
    assert layer_names(model) == layer_names(model, "all")


def test_dynunet_layer_names_follow_the_number_of_levels():
    model = build_dynunet(3, filters=(8, 16, 32))
    assert layer_names(model, "encoder") == ["input_block", "downsamples.0", "bottleneck"]
    assert layer_names(model, "decoder") == ["upsamples.0", "upsamples.1"]


@pytest.mark.parametrize(
    "build, shape",
    [(lambda: build_dynunet(2), (1, 1, 32, 32)), (lambda: build_resnet_unet(2), (1, 1, 64, 64))],
    ids=["dynunet", "resnet_unet"],
)
def test_layer_names_are_in_forward_order(build, shape):
    model = build().eval()
    names = layer_names(model)
    assert _call_order(model, names, torch.rand(shape)) == names


def test_resnet_unet_levels():
    model = build_resnet_unet(2)
    encoder = ["encoder.act", "encoder.layer1", "encoder.layer2", "encoder.layer3", "encoder.layer4"]
    assert layer_names(model, "encoder") == encoder
    assert layer_names(model, "decoder") == [f"decoder.blocks.{i}" for i in range(5)]
    assert layer_names(model)[-1] == "segmentation_head"
    assert encoder_levels(model) == encoder[:-1]


def test_encoder_levels_end_before_the_bottleneck():
    assert encoder_levels(build_dynunet(2)) == ["input_block", "downsamples.0", "downsamples.1"]
    assert encoder_levels(TwoLevelNet()) == ["input_block"]


def test_part_table_modules_and_errors():
    model = TwoLevelNet()
    assert layer_names(model) == ["input_block", "bottleneck", "output_block"]
    assert layer_names(model, "decoder") == []
    with pytest.raises(ValueError, match="unknown layer group"):
        layer_names(model, "head")
    with pytest.raises(TypeError, match="no known encoder/decoder/head split"):
        layer_names(nn.Conv2d(1, 1, 1))


def test_encoder_levels_need_a_skip_level():
    class OneLevel(nn.Module):
        part_table = {"bottleneck": "encoder"}

        def __init__(self) -> None:
            super().__init__()
            self.bottleneck = nn.Identity()

    with pytest.raises(ValueError, match="no skip level"):
        encoder_levels(OneLevel())


@pytest.mark.parametrize("spatial_dims, size", [(2, 32), (3, 16)])
def test_feature_recorder_shapes_for_dynunet(spatial_dims, size):
    model = build_dynunet(spatial_dims).eval()
    x = torch.rand(2, 1, *([size] * spatial_dims))
    with FeatureRecorder(model) as recorder:
        model(x)
    sizes = {
        "input_block": (16, size),
        "downsamples.0": (32, size // 2),
        "downsamples.1": (64, size // 4),
        "bottleneck": (128, size // 8),
        "upsamples.0": (64, size // 4),
        "upsamples.1": (32, size // 2),
        "upsamples.2": (16, size),
        "output_block": (2, size),
    }
    assert list(recorder.features) == list(sizes)
    for name, (channels, side) in sizes.items():
        assert recorder.features[name].shape == (2, channels, *([side] * spatial_dims)), name
    assert _hook_count(model) == 0


def test_feature_recorder_records_detached_outputs_of_the_last_forward():
    model = build_dynunet(2)
    with FeatureRecorder(model, ["bottleneck", "output_block"]) as recorder:
        model(torch.rand(1, 1, 32, 32))
        out = model(torch.rand(3, 1, 32, 32))
    assert set(recorder.features) == {"bottleneck", "output_block"}
    assert recorder.features["bottleneck"].shape[0] == 3
    assert not recorder.features["output_block"].requires_grad
    torch.testing.assert_close(recorder.features["output_block"], out.detach())


def test_feature_recorder_removes_hooks_on_exit_and_on_error():
    model = build_dynunet(2)
    with FeatureRecorder(model, layer_names(model)):
        assert _hook_count(model) == len(layer_names(model))
    assert _hook_count(model) == 0
    with pytest.raises(RuntimeError):
        with FeatureRecorder(model, ["bottleneck"]):
            model(torch.rand(1, 3, 32, 32))  # wrong number of channels
    assert _hook_count(model) == 0


def test_feature_recorder_rejects_unknown_names():
    with pytest.raises(ValueError, match="no module 'downsamples.7'"):
        FeatureRecorder(build_dynunet(2), ["downsamples.7"])


@pytest.mark.parametrize(
    "map_shape, size, mode",
    [((5, 4, 6), (16, 12), "bilinear"), ((5, 8, 8), (6, 20), "bilinear"), ((3, 4, 3, 5), (8, 9, 10), "trilinear")],
    ids=["upsample2d", "mixed2d", "upsample3d"],
)
def test_interpolate_at_equals_interpolate_then_index(map_shape, size, mode):
    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(map_shape, generator=g, dtype=torch.float64)
    points = torch.stack([torch.randint(0, s, (50,), generator=g) for s in size], dim=1)
    resized = F.interpolate(fmap[None], size=size, mode=mode, align_corners=False)[0]
    expected = resized[(slice(None), *points.T)].T
    torch.testing.assert_close(interpolate_at(fmap, points, size), expected)


def test_interpolate_at_checks_shapes():
    with pytest.raises(ValueError, match="expected a"):
        interpolate_at(torch.zeros(2, 4, 4), torch.zeros(3, 3, dtype=torch.long), (8, 8))
