"""Checkpoints as users have them: wrapped by training scripts, DataParallel, torch.compile, TorchScript, and the
real public MONAI UNet and Model Zoo GAN in ../shared/checkpoints."""

import copy
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNet, resnet18

from medtransfer.cli import main
from medtransfer.handlers import ApplyTransfer
from medtransfer.networks import NetworkSpecError, build_dynunet, build_resnet_unet, parts, state_tensors
from medtransfer.transfer.adapters import (
    CONTAINER_KEYS,
    ArchitectureMismatchError,
    TorchScriptCheckpointError,
    is_torchscript,
    load_checkpoint,
)
from medtransfer.transfer.source_network import build_run_network, resolve_source_network

FILTERS = (8, 16, 32)


@pytest.fixture(scope="module")
def checkpoints(test_data) -> Path:
    return Path(test_data).parent / "checkpoints"


@pytest.fixture(scope="module")
def mouse_unet(checkpoints) -> Path:
    return checkpoints / "monai_unet2d_ivadomed_mouse_sc" / "best_metric_model.pth"


@pytest.fixture(scope="module")
def mednist_gan(checkpoints) -> Path:
    return checkpoints / "monai_bundle_mednist_gan"


def _small_unet(num_res_units=1, norm="batch", out_channels=2, seed=0):
    torch.manual_seed(seed)
    return UNet(2, 1, out_channels, channels=(4, 8, 16), strides=(2, 2), num_res_units=num_res_units, norm=norm)


def _equal_to(adapted_state, source: torch.nn.Module) -> bool:
    tensors = state_tensors(source)
    return all(torch.equal(tensor, tensors[name]) for name, tensor in adapted_state.items())


# --- containers and wrappers, made by the libraries that make them ---------------------------------------------


@pytest.mark.parametrize("container", CONTAINER_KEYS)
def test_training_script_containers_with_dataparallel_prefix(tmp_path, container):
    source = build_dynunet(2, filters=FILTERS)
    wrapped = torch.nn.DataParallel(source)
    path = tmp_path / "checkpoint.pth"
    torch.save({container: wrapped.state_dict(), "epoch": 90, "best_prec1": 0.71, "optimizer": {"state": {}}}, path)
    adapted = load_checkpoint(path, build_dynunet(2, filters=FILTERS))
    assert adapted.container == container
    assert adapted.prefixes_removed == ["module."]
    assert adapted.available_parts == ["encoder", "decoder", "head"]
    assert _equal_to(adapted.state, source) and adapted.state.keys() == state_tensors(source).keys()
    assert f"used the {container!r} entry; ignored ['best_prec1', 'epoch', 'optimizer']" in adapted.notes


def test_torch_compile_and_dataparallel_prefixes_are_removed(tmp_path):
    source = _small_unet()
    compiled = torch.compile(torch.nn.DataParallel(source))  # keys: _orig_mod.module.*
    assert all(key.startswith("_orig_mod.module.") for key in compiled.state_dict())
    path = tmp_path / "compiled.pt"
    torch.save(compiled.state_dict(), path)
    adapted = load_checkpoint(path, _small_unet(seed=1))
    assert adapted.prefixes_removed == ["_orig_mod.", "module."]
    assert "removed the '_orig_mod.' prefix of torch.compile" in adapted.notes
    assert _equal_to(adapted.state, source)


def test_transfer_report_names_the_container_and_the_prefix(tmp_path):
    source = _small_unet()
    path = tmp_path / "model.pth"
    torch.save({"model_state_dict": torch.nn.DataParallel(source).state_dict(), "epoch": 3}, path)
    target = _small_unet(seed=1)
    report = ApplyTransfer(target, "encoder", str(path)).apply()
    assert report["checkpoint_container"] == "model_state_dict"
    assert report["checkpoint_prefixes_removed"] == ["module."]
    assert report["network"] == "UNet"
    loaded = [n for n, e in report["tensors"].items() if e["action"] == "loaded"]
    assert sorted(loaded) == sorted(parts(target)["encoder"])
    assert all(torch.equal(state_tensors(target)[n], state_tensors(source)[n]) for n in loaded)


def test_a_resnet_saved_by_a_training_script_goes_into_the_resnet_unet(tmp_path):
    """The issue's third row: {'state_dict': ..., 'best_prec1': ...} with DataParallel's module. prefix."""
    torch.manual_seed(0)
    classifier = resnet18(spatial_dims=2, n_input_channels=3, num_classes=1000)
    path = tmp_path / "model_best.pth.tar"
    torch.save({"state_dict": torch.nn.DataParallel(classifier).state_dict(), "best_prec1": 69.8, "arch": "resnet18",
                "epoch": 90}, path)
    adapted = load_checkpoint(path, build_resnet_unet(2, backbone="resnet18"))
    assert adapted.format == "torchvision_resnet"
    assert (adapted.container, adapted.prefixes_removed) == ("state_dict", ["module."])
    assert adapted.available_parts == ["encoder"]
    summed = classifier.state_dict()["conv1.weight"].sum(dim=1, keepdim=True)
    assert torch.equal(adapted.state["encoder.conv1.weight"], summed)


# --- TorchScript -----------------------------------------------------------------------------------------------


def test_torchscript_is_named_and_refused_unless_trusted(tmp_path):
    source = _small_unet()
    path = tmp_path / "model.ts"
    torch.jit.script(source).save(str(path))
    assert is_torchscript(path)
    with pytest.raises(TorchScriptCheckpointError) as error:
        load_checkpoint(path, _small_unet(seed=1))
    message = str(error.value)
    assert "TorchScript archive" in message and "loading it would run that code" in message
    assert "torch.jit.load('model.ts', map_location='cpu').state_dict()" in message and "--trusted" in message
    adapted = load_checkpoint(path, _small_unet(seed=1), trusted=True)
    assert adapted.container == "torchscript"
    assert adapted.available_parts == ["encoder", "decoder", "head"]
    assert _equal_to(adapted.state, source)


def test_a_plain_torch_save_zip_is_not_taken_for_torchscript(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_small_unet().state_dict(), path)
    assert not is_torchscript(path)


# --- the real MONAI UNet (ivadomed, mouse spinal cord MRI; saved on CUDA) -------------------------------------


def test_real_monai_unet_architecture_is_read_from_its_tensors(mouse_unet):
    architecture = resolve_source_network("auto", mouse_unet)
    # the values of the training script (SOURCE.md): channels (8,16,32,64), strides (2,2,2), 2 res units, batch norm
    assert architecture == {
        "name": "UNet", "spatial_dims": 2, "in_channels": 1, "channels": [8, 16, 32, 64], "strides": [2, 2, 2],
        "num_res_units": 2, "kernel_size": 3, "up_kernel_size": 3, "norm": "BATCH", "act": "PRELU", "bias": True,
    }
    original = UNet(2, 1, 3, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=2, norm="batch")
    state = torch.load(mouse_unet, map_location="cpu", weights_only=True)
    original.load_state_dict(state, strict=True)  # the read architecture is the file's, tensor for tensor


def test_real_monai_unet_fine_tunes_in_its_own_architecture_with_a_binary_head(mouse_unet):
    network = build_run_network(2, init_seed=0, source_network="auto", source_checkpoint=mouse_unet)
    assert isinstance(network, UNet) and network(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    fresh = copy.deepcopy(network)
    report = ApplyTransfer(network, "encoder", str(mouse_unet)).apply()
    assert "3 output channels in the file, 2 in the network" in report["head_replaced"]
    assert report["counts"]["encoder"]["loaded"] == 72 and len(parts(network)["encoder"]) == 72
    state = torch.load(mouse_unet, map_location="cpu", weights_only=True)
    tensors = state_tensors(network)
    assert all(t.device.type == "cpu" for t in state.values())  # saved on CUDA, read onto the CPU
    assert all(torch.equal(tensors[n], state[n]) for n in parts(network)["encoder"])
    fresh_tensors = state_tensors(fresh)
    assert all(torch.equal(tensors[n], fresh_tensors[n]) for n in parts(network)["decoder"] + parts(network)["head"])
    assert load_checkpoint(mouse_unet, fresh).available_parts == ["encoder", "decoder"]
    before = {n: t.clone() for n, t in state_tensors(fresh).items()}
    full = ApplyTransfer(fresh, "full", str(mouse_unet)).apply()
    assert full["counts"]["head"]["reinitialised"] == len(parts(fresh)["head"])  # replaced whole, never mixed
    assert all(torch.equal(state_tensors(fresh)[n], before[n]) for n in parts(fresh)["head"])


def test_real_monai_unet_into_dynunet_explains_the_mismatch(mouse_unet):
    with pytest.raises(ArchitectureMismatchError) as error:
        load_checkpoint(mouse_unet, build_dynunet(2, filters=FILTERS))
    source = error.value.source
    assert (source.family, source.spatial_dims, source.widths, source.in_channels, source.out_channels) == (
        "monai_unet", 2, [8, 16, 32, 64], 1, 3)
    assert "MONAI UNet with 4 levels and 2 residual units" in str(error.value)
    assert "DynUNet with 3 levels (2D, widths [8, 16, 32]" in str(error.value)
    assert "source_network: auto" in str(error.value)


# --- the real Model Zoo bundle: a GAN generator ---------------------------------------------------------------


def test_real_model_zoo_gan_generator_is_named_as_such(mednist_gan):
    with pytest.raises(ArchitectureMismatchError) as error:
        load_checkpoint(mednist_gan / "models" / "model.pt", build_dynunet(2, filters=FILTERS))
    assert error.value.source.family == "monai_gan_generator" and not error.value.source.segmentation
    assert "MONAI GAN Generator" in str(error.value) and "no encoder that reads an image" in str(error.value)
    with pytest.raises(NetworkSpecError, match="GAN generator.*not a segmentation network"):
        resolve_source_network(str(mednist_gan))
    with pytest.raises(NetworkSpecError, match="cannot read the architecture of a MONAI GAN Generator"):
        resolve_source_network("auto", mednist_gan / "models" / "model.pt")


# --- auto refuses what the tensors leave open ------------------------------------------------------------------


@pytest.mark.parametrize(("network", "reason"), [
    (lambda: _small_unet(num_res_units=0), "strides"),
    (lambda: _small_unet(norm=("instance", {"affine": True})), "cannot be told apart"),
])
def test_auto_refuses_an_ambiguous_unet(tmp_path, network, reason):
    path = tmp_path / "model.pt"
    torch.save(network().state_dict(), path)
    with pytest.raises(NetworkSpecError, match=reason):
        resolve_source_network("auto", path)


# --- medtransfer inspect -------------------------------------------------------------------------------------


def test_inspect_real_checkpoints(mouse_unet, mednist_gan, capsys):
    assert main(["inspect", str(mouse_unet)]) == 0
    out = capsys.readouterr().out
    assert "container: none (a plain state dict)" in out and "prefix removed: none" in out
    assert "MONAI UNet with 4 levels and 2 residual units per block (2D, widths [8, 16, 32, 64]" in out
    assert "tensors: 114 (102,229 values): 75 parameters" in out
    assert "dimensionality: 2D; input channels: 1" in out
    assert "its own architecture (UNet, source_network: auto): encoder, decoder" in out
    assert "DynUNet (medtransfer default, 2D, filters [16, 32, 64, 128]): nothing" in out
    assert main(["inspect", str(mednist_gan / "models" / "model.pt")]) == 0
    out = capsys.readouterr().out
    assert "MONAI GAN Generator" in out and "tensors: 33 (314,892 values)" in out


def test_inspect_names_torchscript_and_wrappers(tmp_path, capsys):
    path = tmp_path / "model.ts"
    torch.jit.script(_small_unet()).save(str(path))
    assert main(["inspect", str(path)]) == 2
    assert "TorchScript archive" in capsys.readouterr().err
    assert main(["inspect", str(path), "--trusted"]) == 0
    assert "format: TorchScript archive" in capsys.readouterr().out
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"net": torch.nn.DataParallel(_small_unet()).state_dict(), "epoch": 1}, wrapped)
    assert main(["inspect", str(wrapped)]) == 0
    out = capsys.readouterr().out
    assert "container: 'net' (other entries ignored: epoch)" in out
    assert "prefix removed: 'module.' (DataParallel/DistributedDataParallel)" in out
