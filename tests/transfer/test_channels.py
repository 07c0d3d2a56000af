"""Grey <-> colour transfer: the first convolution is adapted by timm's rule and the notes say so."""

import pytest
import torch

from medtransfer.networks import build_dynunet
from medtransfer.transfer import load_checkpoint
from medtransfer.transfer.channels import input_conv_weight


@pytest.mark.parametrize("dims", [2, 3])
def test_adapted_filters_give_the_same_response_to_an_image_with_equal_channels(dims):
    torch.manual_seed(0)
    conv = torch.nn.functional.conv2d if dims == 2 else torch.nn.functional.conv3d
    grey_weight = torch.randn(8, 1, *[3] * dims)
    grey = torch.rand(2, 1, *[12] * dims)
    as_colour = grey.repeat(1, 3, *[1] * dims)
    assert torch.allclose(conv(as_colour, input_conv_weight(grey_weight, 3)), conv(grey, grey_weight), atol=1e-5)
    colour_weight = torch.randn(8, 3, *[3] * dims)
    assert torch.allclose(conv(grey, input_conv_weight(colour_weight, 1)), conv(as_colour, colour_weight), atol=1e-5)
    assert input_conv_weight(colour_weight, 3) is colour_weight
    assert input_conv_weight(colour_weight, 4).shape[1] == 4


@pytest.mark.parametrize("have, want", [(1, 3), (3, 1)])
def test_grey_checkpoint_into_a_colour_network_and_back(tmp_path, have, want):
    source = build_dynunet(2, in_channels=have, filters=[8, 16, 32], init_seed=0)
    path = tmp_path / "model.pt"
    torch.save(source.state_dict(), path)
    target = build_dynunet(2, in_channels=want, filters=[8, 16, 32], init_seed=1)
    adapted = load_checkpoint(path, target)
    name = "input_block.conv1.conv.weight"
    original = source.state_dict()[name]
    expected = original.sum(1, keepdim=True) if want == 1 else original.repeat(1, 3, 1, 1) / 3
    assert torch.allclose(adapted.state[name], expected)
    assert adapted.available_parts == ["encoder", "decoder", "head"]
    notes = [note for note in adapted.notes if "input channels" in note]
    assert len(notes) >= 1 and all(f"{have} -> {want}" in note and "timm adapt_input_conv" in note for note in notes)
    assert ("summed" in notes[0]) is (want == 1)
