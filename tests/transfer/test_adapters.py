"""Checkpoint adapters put every source tensor at the right name of the target network, or say why they cannot."""

from pathlib import Path

import numpy as np
import pytest
import torch

from medtransfer.networks import build_dynunet, build_resnet_unet, parts, state_tensors
from medtransfer.transfer.adapters import (
    FORMATS,
    ArchitectureMismatchError,
    CheckpointError,
    detect_format,
    load_checkpoint,
)

FILTERS = (8, 16, 32)


class Opaque:
    """A custom class: torch.save pickles it, and weights_only loading must refuse it."""

    def __init__(self) -> None:
        self.payload = 1


class FileWriter:
    """Unpickling it would call open(path, "w"): the file appearing would prove that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _randomised(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Distinct random values for every tensor, so that equality proves where a tensor went."""
    tensors = state_tensors(model)
    return {name: torch.randn(t.shape) if t.is_floating_point() else t.clone() for name, t in tensors.items()}


# --- torchvision ResNet18 layout, written out by hand with torchvision's names and shapes ----------------------


def _bn(prefix: str, channels: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.rand(channels),
        f"{prefix}.bias": torch.randn(channels),
        f"{prefix}.running_mean": torch.randn(channels),
        f"{prefix}.running_var": torch.rand(channels) + 0.5,
        f"{prefix}.num_batches_tracked": torch.tensor(1000),
    }


def torchvision_resnet18_state() -> dict[str, torch.Tensor]:
    state = {"conv1.weight": torch.randn(64, 3, 7, 7), **_bn("bn1", 64)}
    in_planes = 64
    for layer, planes in enumerate((64, 128, 256, 512), start=1):
        for block in (0, 1):
            prefix = f"layer{layer}.{block}"
            state[f"{prefix}.conv1.weight"] = torch.randn(planes, in_planes if block == 0 else planes, 3, 3)
            state.update(_bn(f"{prefix}.bn1", planes))
            state[f"{prefix}.conv2.weight"] = torch.randn(planes, planes, 3, 3)
            state.update(_bn(f"{prefix}.bn2", planes))
            if block == 0 and layer >= 2:
                state[f"{prefix}.downsample.0.weight"] = torch.randn(planes, in_planes, 1, 1)
                state.update(_bn(f"{prefix}.downsample.1", planes))
        in_planes = planes
    state["fc.weight"] = torch.randn(1000, 512)
    state["fc.bias"] = torch.randn(1000)
    return state


# --- nnU-Net v2 PlainConvUNet layout derived from a DynUNet --------------------------------------------------


def nnunet_to_dynunet(stages: int, deep_supervision_heads: int = 0) -> dict[str, str]:
    """The mapping the adapter must implement, written from nnU-Net's and DynUNet's module layouts."""
    mapping = {}

    def block(source: str, target: str) -> None:
        for conv in (0, 1):
            mapping[f"{source}.convs.{conv}.conv.weight"] = f"{target}.conv{conv + 1}.conv.weight"
            for tensor in ("weight", "bias"):
                mapping[f"{source}.convs.{conv}.norm.{tensor}"] = f"{target}.norm{conv + 1}.{tensor}"

    for stage in range(stages):
        target = "input_block" if stage == 0 else "bottleneck" if stage == stages - 1 else f"downsamples.{stage - 1}"
        block(f"encoder.stages.{stage}.0", target)
    for stage in range(stages - 1):  # both run deepest first
        mapping[f"decoder.transpconvs.{stage}.weight"] = f"upsamples.{stage}.transp_conv.conv.weight"
        block(f"decoder.stages.{stage}", f"upsamples.{stage}.conv_block")
    heads = ["output_block"] + [f"deep_supervision_heads.{i}" for i in range(deep_supervision_heads)]
    for offset, head in enumerate(heads):
        for tensor in ("weight", "bias"):
            mapping[f"decoder.seg_layers.{stages - 2 - offset}.{tensor}"] = f"{head}.conv.conv.{tensor}"
    return mapping


def nnunet_weights(model, stages: int, deep_supervision_heads: int = 0) -> tuple[dict, dict[str, str]]:
    """A PlainConvUNet state dict as nnU-Net saves it: biases everywhere, all_modules and decoder.encoder aliases,
    one segmentation layer per decoder stage."""
    target = state_tensors(model)
    mapping = nnunet_to_dynunet(stages, deep_supervision_heads)
    weights = {key: torch.randn(target[name].shape) for key, name in mapping.items()}
    for key in [k for k in weights if k.endswith(".conv.weight")]:
        weights[key.replace(".weight", ".bias")] = torch.randn(weights[key].shape[0])
    for stage in range(stages - 1):
        transposed = weights[f"decoder.transpconvs.{stage}.weight"]
        weights[f"decoder.transpconvs.{stage}.bias"] = torch.randn(transposed.shape[1])
        seg = f"decoder.seg_layers.{stage}"
        if f"{seg}.weight" not in weights:  # deep-supervision output without a head in the target
            channels = weights[f"decoder.stages.{stage}.convs.1.conv.weight"].shape[0]
            out = target["output_block.conv.conv.weight"].shape[0]
            weights[f"{seg}.weight"] = torch.randn(out, channels, *[1] * (model.spatial_dims))
            weights[f"{seg}.bias"] = torch.randn(out)
    for key in list(weights):
        for module, index in (("conv", 0), ("norm", 1)):
            if ".convs." in key and f".{module}." in key:
                weights[key.replace(f".{module}.", f".all_modules.{index}.")] = weights[key]
        if key.startswith("encoder."):
            weights[f"decoder.{key}"] = weights[key]
    return weights, mapping


def nnunet_checkpoint(weights: dict) -> dict:
    return {
        "network_weights": weights,
        "init_args": {"configuration": "2d", "fold": 0},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_architecture_class_name": "PlainConvUNet",
    }


# --- detection -----------------------------------------------------------------------------------------------


def test_detect_format_of_each_format():
    model = build_dynunet(2, filters=FILTERS)
    plain = model.state_dict()
    pretraining = {"medtransfer_checkpoint": 1, "state_dict": {}, "trained_parts": ["encoder"]}
    assert detect_format(pretraining) == "medtransfer"
    assert detect_format(plain, model) == "medtransfer"
    assert detect_format(plain) == "monai_bundle"  # without the model a name-keyed dict reads as a bundle's
    assert detect_format({"model": plain, "optimizer": {}}, model) == "monai_bundle"
    assert detect_format({f"module.{k}": v for k, v in plain.items()}, model) == "monai_bundle"
    assert detect_format(torchvision_resnet18_state(), model) == "torchvision_resnet"
    weights, _ = nnunet_weights(model, len(FILTERS))
    assert detect_format(nnunet_checkpoint(weights)) == "nnunet_v2"
    with pytest.raises(CheckpointError, match="unrecognised checkpoint"):
        detect_format({"epoch": 3, "note": "no tensors"})


def test_unknown_format_name_is_refused(tmp_path):
    model = build_dynunet(2, filters=FILTERS)
    path = _save(model.state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=f"unknown checkpoint format 'keras'.*{FORMATS[0]}"):
        load_checkpoint(path, model, format="keras")


# --- medtransfer -------------------------------------------------------------------------------------------


def test_medtransfer_pretraining_checkpoint_provides_its_trained_parts(tmp_path):
    model = build_dynunet(2, filters=FILTERS)
    source = _randomised(model)
    encoder = {name: source[name] for name in parts(model)["encoder"]}
    path = _save(
        {
            "medtransfer_checkpoint": 1,
            "state_dict": encoder,
            "trained_parts": ["encoder"],
            "objective": "denoising",
            "epoch": 12,
            "network": {"family": "dynunet", "spatial_dims": 2, "filters": list(FILTERS)},
        },
        tmp_path / "pretrained.pt",
    )
    adapted = load_checkpoint(path, model)
    assert adapted.format == "medtransfer"
    assert adapted.available_parts == ["encoder"]
    assert adapted.meta["objective"] == "denoising" and adapted.meta["epoch"] == 12
    assert adapted.state.keys() == encoder.keys()
    assert all(torch.equal(adapted.state[name], encoder[name]) for name in encoder)


def test_medtransfer_pretraining_checkpoint_must_provide_what_it_declares(tmp_path):
    model = build_dynunet(2, filters=FILTERS)
    source = _randomised(model)
    encoder = {name: source[name] for name in parts(model)["encoder"]}
    checkpoint = {"medtransfer_checkpoint": 1, "state_dict": encoder, "trained_parts": ["encoder", "decoder"]}
    with pytest.raises(CheckpointError, match=r"declares trained_parts \['encoder', 'decoder'\].*\['encoder'\]"):
        load_checkpoint(_save(checkpoint, tmp_path / "pretrained.pt"), model)
    checkpoint["trained_parts"] = ["encoder"]
    checkpoint["network"] = {"family": "dynunet", "spatial_dims": 3}
    with pytest.raises(CheckpointError, match="pretrained for a 3D network, the target is 2D"):
        load_checkpoint(_save(checkpoint, tmp_path / "pretrained.pt"), model)


def test_fine_tuned_state_dict_with_skip_layer_aliases_adapts_to_every_part(tmp_path):
    source = build_dynunet(2, filters=FILTERS)
    saved = source.state_dict()
    assert any(key.startswith("skip_layers.") for key in saved)
    target = build_dynunet(2, filters=FILTERS)
    adapted = load_checkpoint(_save(saved, tmp_path / "model.pt"), target)
    assert adapted.format == "medtransfer"
    assert adapted.available_parts == ["encoder", "decoder", "head"]
    assert adapted.state.keys() == state_tensors(target).keys()
    assert all(torch.equal(adapted.state[name], t) for name, t in state_tensors(source).items())
    assert any("alias" in note and "skip_layers" in note for note in adapted.notes)


def test_a_part_given_only_in_part_is_refused(tmp_path):
    model = build_dynunet(2, filters=FILTERS)
    state = {k: v for k, v in state_tensors(model).items() if not k.startswith("bottleneck.")}
    with pytest.raises(CheckpointError, match=r"only \d+ of the \d+ tensors of the encoder.*bottleneck"):
        load_checkpoint(_save(state, tmp_path / "model.pt"), model)


# --- MONAI bundle ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", ["model_entry", "ddp_prefix"])
def test_monai_bundle_model_entry_and_ddp_prefix(tmp_path, wrap):
    source = build_dynunet(2, filters=FILTERS)
    saved = source.state_dict()
    if wrap == "model_entry":
        saved = {"model": saved, "optimizer": {"state": {}}}
    else:
        saved = {f"module.{key}": tensor for key, tensor in saved.items()}
    target = build_dynunet(2, filters=FILTERS)
    adapted = load_checkpoint(_save(saved, tmp_path / "model.pt"), target)
    assert adapted.format == "monai_bundle"
    assert adapted.available_parts == ["encoder", "decoder", "head"]
    assert adapted.state.keys() == state_tensors(target).keys()
    assert all(torch.equal(adapted.state[name], t) for name, t in state_tensors(source).items())


# --- torchvision ResNet ------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_batch_counts", [True, False])
def test_torchvision_resnet18_fills_the_whole_encoder(tmp_path, with_batch_counts):
    source = torchvision_resnet18_state()
    if not with_batch_counts:  # torchvision's own ImageNet files predate num_batches_tracked
        source = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    model = build_resnet_unet(2, backbone="resnet18")
    adapted = load_checkpoint(_save(source, tmp_path / "resnet18.pth"), model)

    assert adapted.format == "torchvision_resnet"
    assert adapted.available_parts == ["encoder"]
    assert set(adapted.state) == set(parts(model)["encoder"])
    assert torch.equal(adapted.state["encoder.conv1.weight"], source["conv1.weight"].sum(dim=1, keepdim=True))
    for key, tensor in source.items():
        if key != "conv1.weight" and not key.startswith("fc.") and ".downsample." not in key:
            assert torch.equal(adapted.state[f"encoder.{key}"], tensor), key
    assert any("fc.weight" in note and "dropped" in note for note in adapted.notes)
    assert any("summed over 3 RGB channels" in note for note in adapted.notes)
    # MONAI's resnet18 has parameter-free shortcuts: torchvision's projections are dropped, and said so
    assert any("layer2.0, layer3.0, layer4.0" in note for note in adapted.notes)
    assert any("num_batches_tracked" in note for note in adapted.notes) is not with_batch_counts


def test_torchvision_weights_with_three_channels_are_copied(tmp_path):
    source = torchvision_resnet18_state()
    model = build_resnet_unet(2, in_channels=3, backbone="resnet18")
    adapted = load_checkpoint(_save(source, tmp_path / "resnet18.pth"), model)
    assert torch.equal(adapted.state["encoder.conv1.weight"], source["conv1.weight"])


def test_torchvision_weights_into_a_3d_network_are_refused(tmp_path):
    path = _save(torchvision_resnet18_state(), tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointError, match="2D ImageNet weights cannot be put into a 3D network") as error:
        load_checkpoint(path, build_resnet_unet(3, backbone="resnet18"))
    assert str(path) in str(error.value)


def test_torchvision_weights_of_another_depth_say_which_keys_do_not_fit(tmp_path):
    source = torchvision_resnet18_state()
    source["layer1.2.conv1.weight"] = torch.randn(64, 64, 3, 3)  # a block resnet18 does not have
    with pytest.raises(CheckpointError, match=r"1 of its \d+ tensors have no place.*encoder.layer1.2.conv1.weight"):
        load_checkpoint(_save(source, tmp_path / "resnet.pth"), build_resnet_unet(2, backbone="resnet18"))


# --- nnU-Net v2 --------------------------------------------------------------------------------------------


def test_nnunet_plain_conv_unet_lands_at_dynunet_names(tmp_path):
    model = build_dynunet(2, filters=FILTERS)
    weights, mapping = nnunet_weights(model, len(FILTERS))
    adapted = load_checkpoint(_save(nnunet_checkpoint(weights), tmp_path / "network_weights.pth"), model)

    assert adapted.format == "nnunet_v2"
    assert adapted.available_parts == ["encoder", "decoder", "head"]
    assert adapted.state.keys() == state_tensors(model).keys()
    for key, name in mapping.items():
        assert torch.equal(adapted.state[name], weights[key]), (key, name)
    # spot checks written by hand: nnU-Net's decoder and DynUNet's upsamples both start at the deepest level
    assert adapted.state["upsamples.0.transp_conv.conv.weight"].shape == (32, 16, 2, 2)
    assert torch.equal(adapted.state["upsamples.0.transp_conv.conv.weight"], weights["decoder.transpconvs.0.weight"])
    assert torch.equal(
        adapted.state["upsamples.1.conv_block.conv1.conv.weight"], weights["decoder.stages.1.convs.0.conv.weight"]
    )
    assert torch.equal(adapted.state["bottleneck.norm2.bias"], weights["encoder.stages.2.0.convs.1.norm.bias"])
    assert torch.equal(adapted.state["output_block.conv.conv.bias"], weights["decoder.seg_layers.1.bias"])
    assert adapted.meta == {"trainer_name": "nnUNetTrainer"}
    notes = " | ".join(adapted.notes)
    assert "alias" in notes and "seg_layers [0]" in notes and "conv biases" in notes and "transposed-conv" in notes


def test_nnunet_deep_supervision_outputs_feed_dynunet_deep_supervision_heads(tmp_path):
    model = build_dynunet(3, filters=(4, 8, 16, 32), deep_supervision=True)
    weights, mapping = nnunet_weights(model, 4, deep_supervision_heads=1)
    adapted = load_checkpoint(_save(nnunet_checkpoint(weights), tmp_path / "network_weights.pth"), model)
    assert adapted.state.keys() == state_tensors(model).keys()
    assert mapping["decoder.seg_layers.1.weight"] == "deep_supervision_heads.0.conv.conv.weight"
    for key, name in mapping.items():
        assert torch.equal(adapted.state[name], weights[key]), (key, name)


@pytest.mark.parametrize("other_filters", [(8, 16, 32, 64), (8, 16, 24)])
def test_nnunet_of_another_topology_is_refused(tmp_path, other_filters):
    weights, _ = nnunet_weights(build_dynunet(2, filters=other_filters), len(other_filters))
    path = _save(nnunet_checkpoint(weights), tmp_path / "network_weights.pth")
    expected = r"has \d stages with features .* DynUNet 3 levels with filters \[8, 16, 32\]"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path, build_dynunet(2, filters=FILTERS))


def test_nnunet_residual_encoder_is_refused(tmp_path):
    weights = {"encoder.stem.convs.0.conv.weight": torch.randn(8, 1, 3, 3)}
    path = _save(nnunet_checkpoint(weights), tmp_path / "network_weights.pth")
    with pytest.raises(CheckpointError, match="not those of a PlainConvUNet.*encoder.stem"):
        load_checkpoint(path, build_dynunet(2, filters=FILTERS))


def test_real_nnunet_checkpoint_with_numpy_numbers_is_refused_with_extraction_hint(tmp_path):
    model = build_dynunet(2, filters=FILTERS)
    weights, _ = nnunet_weights(model, len(FILTERS))
    checkpoint = {**nnunet_checkpoint(weights), "_best_ema": np.float64(0.8), "current_epoch": 1000}
    path = _save(checkpoint, tmp_path / "checkpoint_final.pth")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, model)
    message = str(error.value)
    assert str(path) in message and "refuses pickled objects" in message
    assert "weights_only=False" in message and "network_weights" in message


# --- unsafe, damaged and foreign files -----------------------------------------------------------------------


def test_pickled_objects_are_refused(tmp_path):
    path = _save({"state_dict": Opaque()}, tmp_path / "opaque.pt")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, build_dynunet(2, filters=FILTERS))
    message = str(error.value)
    assert str(path) in message and "refuses pickled objects" in message and "Opaque" in message


def test_pickled_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "written_by_unpickling"
    path = _save({"state_dict": FileWriter(marker)}, tmp_path / "payload.pt")
    with pytest.raises(CheckpointError, match="refuses pickled objects"):
        load_checkpoint(path, build_dynunet(2, filters=FILTERS))
    assert not marker.exists()


def test_foreign_bytes_are_reported_as_damaged(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupted, truncated or not a PyTorch checkpoint"):
        load_checkpoint(path, build_dynunet(2, filters=FILTERS))


def test_truncated_file_is_reported_as_damaged(tmp_path):
    model = build_dynunet(2, filters=FILTERS)
    path = _save(model.state_dict(), tmp_path / "model.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupted, truncated or not a PyTorch checkpoint") as error:
        load_checkpoint(path, model)
    assert str(path) in str(error.value)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt", build_dynunet(2, filters=FILTERS))


def test_resnet_weights_into_a_dynunet_are_refused_with_expected_names(tmp_path):
    path = _save(torchvision_resnet18_state(), tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointError, match="DynUNet has no such encoder.*input_block.conv1.conv.weight"):
        load_checkpoint(path, build_dynunet(2, filters=FILTERS))


def test_resnet_unet_bundle_into_a_dynunet_says_nothing_fits_and_what_each_side_is(tmp_path):
    path = _save(build_resnet_unet(2, backbone="resnet10").state_dict(), tmp_path / "model.pt")
    with pytest.raises(ArchitectureMismatchError, match=r"none of its \d+ tensors fits DynUNet") as error:
        load_checkpoint(path, build_dynunet(2, filters=FILTERS))
    assert (error.value.source.family, error.value.source.spatial_dims) == ("resnet_unet", 2)
    assert error.value.source.widths == [64, 128, 256, 512]
    assert (error.value.target.family, error.value.target.widths) == ("dynunet", list(FILTERS))
    assert "FlexibleUNet with a ResNet encoder (2D, widths [64, 128, 256, 512]" in str(error.value)
    assert "DynUNet with 3 levels (2D, widths [8, 16, 32]" in str(error.value)


def test_dynunet_with_other_filters_reports_shapes(tmp_path):
    path = _save(build_dynunet(2, filters=(4, 8, 16)).state_dict(), tmp_path / "model.pt")
    expected = r"other shapes.*input_block.conv1.conv.weight: checkpoint \(4, 1, 3, 3\) vs network \(8, 1, 3, 3\)"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path, build_dynunet(2, filters=FILTERS))


def test_deep_supervision_bundle_into_a_plain_dynunet_names_the_extra_keys(tmp_path):
    path = _save(build_dynunet(2, filters=FILTERS, deep_supervision=True).state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="have no place in DynUNet.*deep_supervision_heads.0"):
        load_checkpoint(path, build_dynunet(2, filters=FILTERS))
