"""Every supported architecture splits into encoder / decoder / head the same way, and freezing holds on each."""

import copy

import pytest
import torch
from monai.networks.nets import BasicUNet, SegResNet, SwinUNETR, UNet

from medtransfer.networks import build_dynunet, build_resnet_unet, count_parameters, part_modules, parts, state_tensors
from medtransfer.transfer import FrozenParts, copy_parts, get_strategy

# name -> (builder taking out_channels, input size); small enough for a shared CPU
ARCHITECTURES = {
    "DynUNet": (lambda out: build_dynunet(2, out_channels=out, filters=(4, 8, 16)), 32),
    "FlexibleUNet": (lambda out: build_resnet_unet(2, out_channels=out, backbone="resnet10"), 64),
    "UNet": (lambda out: UNet(2, 1, out, channels=(4, 8, 16), strides=(2, 2), num_res_units=2, norm="batch"), 32),
    "UNet_no_res_units": (lambda out: UNet(2, 1, out, channels=(4, 8, 16), strides=(2, 2)), 32),
    "BasicUNet": (lambda out: BasicUNet(2, 1, out, features=(4, 4, 8, 8, 16, 4), norm="batch"), 32),
    "SegResNet": (lambda out: SegResNet(2, init_filters=4, in_channels=1, out_channels=out, num_groups=2,
                                        norm=("group", {"num_groups": 2})), 32),
    "SwinUNETR": (lambda out: SwinUNETR(in_channels=1, out_channels=out, spatial_dims=2, feature_size=12,
                                        depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)), 64),  # 32 leaves 1×1 at the bottom
}


def _build(name: str, out_channels: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ARCHITECTURES[name][0](out_channels)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_parts_cover_every_tensor_exactly_once(name):
    model = _build(name)
    split = parts(model)
    names = [n for part in split.values() for n in part]
    assert len(names) == len(set(names))
    assert set(names) == set(state_tensors(model))
    assert all(split[part] for part in split), {part: len(v) for part, v in split.items()}
    counts = count_parameters(model)
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_the_head_holds_exactly_the_tensors_whose_shape_depends_on_the_class_count(name):
    # built from the same seed with 2 and 3 classes: the tensors that differ in shape are the class-count ones
    two, three = state_tensors(_build(name, 2)), state_tensors(_build(name, 3))
    depends = {n for n in two if two[n].shape != three[n].shape}
    head = set(parts(_build(name, 2))["head"])
    assert depends and depends <= head
    assert not any(n in depends for part in ("encoder", "decoder") for n in parts(_build(name))[part])


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_part_modules_hold_exactly_their_parts_tensors(name):
    model = _build(name)
    split = parts(model)
    for part, modules in part_modules(model).items():
        inside = {f"{prefix}.{n}" for prefix, module in modules for n, _ in module.named_parameters()}
        assert inside == set(parts(model, include_buffers=False)[part])
        assert inside <= set(split[part])


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_strategies_load_the_same_parts_on_every_architecture(name):
    source = _build(name, seed=1)
    state = {n: torch.randn(t.shape) if t.is_floating_point() else t.clone() for n, t in state_tensors(source).items()}
    fresh = _build(name, seed=2)
    for strategy, loaded in {"encoder": {"encoder"}, "decoder": {"decoder"}, "full": {"encoder", "decoder", "head"},
                             "encoder_frozen": {"encoder"}}.items():
        target = copy.deepcopy(fresh)
        report = copy_parts(target, state, get_strategy(strategy), "test")
        tensors = state_tensors(target)
        for tensor_name, entry in report.items():
            moved = torch.equal(tensors[tensor_name], state[tensor_name])
            assert (entry["action"] == "loaded") == (entry["part"] in loaded), (strategy, tensor_name, entry)
            if entry["action"] == "loaded":
                assert moved


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("strategy", ["encoder_frozen", "random_encoder_frozen"])
def test_freezing_moves_no_frozen_tensor_in_training(name, strategy):
    model = _build(name)
    frozen = FrozenParts(model, get_strategy(strategy).freeze)
    frozen.freeze()
    before = {n: t.detach().clone() for n, t in state_tensors(model).items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    size = ARCHITECTURES[name][1]
    model.train()
    for step in range(2):
        torch.manual_seed(step)
        optimizer.zero_grad()
        loss = model(torch.randn(2, 1, size, size)).square().mean()
        loss.backward()
        optimizer.step()
    after = state_tensors(model)
    split = parts(model)
    assert all(torch.equal(before[n], after[n]) for n in split["encoder"]), "a frozen encoder tensor moved"
    moved = [n for n in split["decoder"] + split["head"] if not torch.equal(before[n], after[n])]
    assert moved, "nothing trainable moved: the check could not fail"
