"""Freezing with BatchNorm (ResNet-encoder U-Net), unfreezing on schedule, learning-rate groups, head re-init."""

import pytest
import torch
from ignite.engine import Engine, Events

from medtransfer.handlers import ApplyTransfer
from medtransfer.networks import build_dynunet, build_resnet_unet, parts, state_tensors
from medtransfer.transfer import TransferError


def _save(network, path):
    torch.save(network.state_dict(), path)
    return str(path)


def _train_steps(network, groups, steps=3, size=64):
    optimizer = torch.optim.Adam(groups)
    network.train()
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        optimizer.zero_grad()
        network(torch.rand(2, 1, size, size, generator=generator)).mean().backward()
        optimizer.step()


def test_frozen_encoder_keeps_batchnorm_statistics_while_the_decoder_trains(tmp_path):
    source = _save(build_resnet_unet(2, backbone="resnet10", init_seed=99), tmp_path / "resnet.pt")
    network = build_resnet_unet(2, backbone="resnet10", init_seed=0)
    transfer = ApplyTransfer(network, "encoder_frozen", source_checkpoint=source)
    groups = transfer.param_groups(1e-2)
    trainable = {id(p) for g in groups for p in g["params"]}
    encoder_names = set(parts(network)["encoder"])
    assert not any(id(p) in trainable for n, p in network.named_parameters() if n in encoder_names)
    before = {n: t.clone() for n, t in state_tensors(network).items()}
    _train_steps(network, groups)
    after = state_tensors(network)
    stats = [n for n in encoder_names if "running_" in n]
    assert stats and all(torch.equal(after[n], before[n]) for n in encoder_names)  # weights and BN statistics
    decoder_stats = [n for n in parts(network)["decoder"] if "running_mean" in n]
    assert any(not torch.equal(after[n], before[n]) for n in decoder_stats)


def test_unfreeze_epoch_makes_the_encoder_trainable_later(tmp_path):
    source = _save(build_dynunet(2, filters=(8, 16, 32), init_seed=5), tmp_path / "src.pt")
    network = build_dynunet(2, filters=(8, 16, 32), init_seed=0)
    transfer = ApplyTransfer(network, "encoder_frozen", source_checkpoint=source, unfreeze_epoch=1)
    optimizer = torch.optim.Adam(transfer.param_groups(1e-2))
    encoder = parts(network)["encoder"]
    snapshots = {}

    def step(engine, _batch):
        optimizer.zero_grad()
        network(torch.rand(2, 1, 32, 32)).mean().backward()
        optimizer.step()

    trainer = Engine(step)
    transfer.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: snapshots.__setitem__(
        e.state.epoch, {n: state_tensors(network)[n].clone() for n in encoder}))
    trainer.run(range(2), max_epochs=2)
    loaded = torch.load(source, weights_only=True)
    assert all(torch.equal(snapshots[1][n], loaded[n]) for n in encoder)  # frozen during epoch 1
    assert any(not torch.equal(snapshots[2][n], loaded[n]) for n in encoder)  # trained in epoch 2
    assert all(p.requires_grad for p in network.parameters())


def test_transferred_tensors_get_their_own_learning_rate(tmp_path):
    source = _save(build_dynunet(2, filters=(8, 16, 32), init_seed=5), tmp_path / "src.pt")
    network = build_dynunet(2, filters=(8, 16, 32), init_seed=0)
    groups = ApplyTransfer(network, "encoder", source_checkpoint=source, transferred_lr_scale=0.1).param_groups(0.01)
    by_name = {g["name"]: g for g in groups}
    assert by_name["transferred"]["lr"] == pytest.approx(0.001) and by_name["other"]["lr"] == pytest.approx(0.01)
    encoder = {id(p) for n, p in network.named_parameters() if n in set(parts(network)["encoder"])}
    assert {id(p) for p in by_name["transferred"]["params"]} == encoder


def test_full_strategy_reinitialises_a_head_of_another_shape_and_says_so(tmp_path):
    source_network = build_dynunet(2, filters=(8, 16, 32), out_channels=3, init_seed=5)
    source = _save(source_network, tmp_path / "three_classes.pt")
    network = build_dynunet(2, filters=(8, 16, 32), out_channels=2, init_seed=0)
    fresh = state_tensors(build_dynunet(2, filters=(8, 16, 32), out_channels=2, init_seed=0))
    report = ApplyTransfer(network, "full", source_checkpoint=source).apply()
    assert report["head_reinitialised"] is True
    assert report["counts"]["head"] == {"reinitialised": 2, "frozen": 0}
    assert "shape (3, 8, 1, 1) in checkpoint" in report["tensors"]["output_block.conv.conv.weight"]["reason"]
    assert torch.equal(state_tensors(network)["output_block.conv.conv.weight"], fresh["output_block.conv.conv.weight"])
    loaded = state_tensors(source_network)
    assert all(torch.equal(state_tensors(network)[n], loaded[n]) for n in parts(network)["decoder"])


def test_a_strategy_that_would_load_nothing_is_an_error(tmp_path):
    encoder_only = build_dynunet(2, filters=(8, 16, 32), init_seed=5)
    state = {n: t for n, t in state_tensors(encoder_only).items() if n in set(parts(encoder_only)["encoder"])}
    source = tmp_path / "encoder_only.pt"
    torch.save({"medtransfer_checkpoint": 1, "state_dict": state, "trained_parts": ["encoder"],
                "objective": "classification", "epoch": 3, "network": {"family": "dynunet", "spatial_dims": 2}}, source)
    network = build_dynunet(2, filters=(8, 16, 32), init_seed=0)
    with pytest.raises(TransferError, match=r"strategy 'decoder' would load nothing of the decoder from .*encoder_only.pt"):
        ApplyTransfer(network, "decoder", source_checkpoint=str(source)).apply()
    report = ApplyTransfer(network, "encoder", source_checkpoint=str(source)).apply()
    assert report["checkpoint_format"] == "medtransfer" and report["checkpoint_meta"]["objective"] == "classification"
