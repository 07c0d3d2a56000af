"""Tests for layer-wise network comparison: loading networks, layer CKA/RSA, reports, and the real-data check
that a frozen encoder's layers stay identical (CKA 1) while the decoder moves."""

import copy
import json

import pytest
import torch
from monai.losses import DiceCELoss

from medtransfer.analysis.compare import (
    CompareError,
    image_batches,
    layer_cka,
    load_network,
    random_network,
    write_cka_report,
)
from medtransfer.data import open_manifest
from medtransfer.handlers import ApplyTransfer
from medtransfer.networks import build_dynunet, parts, state_tensors

FILTERS = (4, 8, 16)


def _encoder_checkpoint(path, seed=3):
    net = build_dynunet(2, filters=FILTERS, init_seed=seed)
    tensors = state_tensors(net)
    payload = {
        "medtransfer_checkpoint": 1,
        "state_dict": {n: tensors[n].clone() for n in parts(net)["encoder"]},
        "trained_parts": ["encoder"],
        "objective": "classification",
        "epoch": 1,
        "network": {"family": "dynunet", "spatial_dims": 2},
    }
    torch.save(payload, path)
    return net


def test_encoder_only_checkpoint_fills_other_parts_from_seeded_init_and_says_so(tmp_path):
    source = _encoder_checkpoint(tmp_path / "enc.pt")
    loaded = load_network(tmp_path / "enc.pt", init_seed=7)
    assert loaded.filters == list(FILTERS) and loaded.spatial_dims == 2
    assert loaded.loaded_parts == ["encoder"] and loaded.random_parts == ["decoder", "head"]
    assert any("seeded random init (init_seed=7)" in note for note in loaded.notes)
    got, want, fresh = state_tensors(loaded.model), state_tensors(source), state_tensors(
        build_dynunet(2, filters=FILTERS, init_seed=7))
    assert all(torch.equal(got[n], want[n]) for n in parts(source)["encoder"])
    assert all(torch.equal(got[n], fresh[n]) for n in parts(source)["decoder"])


def test_run_folder_uses_config_and_model_pt(tmp_path):
    net = build_dynunet(2, filters=FILTERS, init_seed=1)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    (tmp_path / "run.json").write_text(json.dumps({"config": {"task": "segmentation", "spatial_dims": 2,
                                                              "filters": list(FILTERS), "seed": 1}}))
    loaded = load_network(tmp_path)
    assert loaded.random_parts == [] and loaded.config["seed"] == 1
    assert all(torch.equal(state_tensors(loaded.model)[k], v) for k, v in state_tensors(net).items())
    with pytest.raises(CompareError, match="no weights file"):
        (tmp_path / "model.pt").unlink()
        load_network(tmp_path)


def test_layer_cka_identity_random_and_pool_mode(tmp_path):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(10, 1, 16, 16, generator=generator)
    batches = [images[:5], images[5:], images[:2]]  # the last batch (< 4) is dropped in flatten mode
    net = build_dynunet(2, filters=FILTERS, init_seed=0).eval()
    same = layer_cka(net, copy.deepcopy(net), batches, "all")
    assert [row["layer"] for row in same] == ["input_block", "downsamples.0", "bottleneck", "upsamples.0",
                                               "upsamples.1", "output_block"]
    assert all(abs(row["cka"] - 1) < 1e-9 and abs(row["rsa"] - 1) < 1e-9 for row in same)
    assert same[0]["n_examples"] == 10 and same[0]["dropped_examples"] == 2
    other = layer_cka(net, build_dynunet(2, filters=FILTERS, init_seed=5), batches, "encoder")
    assert len(other) == 3 and all(row["part"] == "encoder" for row in other)
    assert all(row["cka"] < 0.999 for row in other)
    pooled = layer_cka(net, copy.deepcopy(net), [images[i:i + 1] for i in range(10)], "decoder", mode="pool")
    assert all(abs(row["cka"] - 1) < 1e-9 for row in pooled) and pooled[0]["n_batches"] == 10
    paths = write_cka_report({"self": same, "random": other}, tmp_path / "report", meta={"what": "test"})
    assert paths["png"].stat().st_size > 1000
    assert len(paths["csv"].read_text().strip().splitlines()) == 1 + 6 + 3
    assert set(json.loads(paths["json"].read_text())["comparisons"]) == {"self", "random"}


def test_random_network_has_same_architecture(tmp_path):
    _encoder_checkpoint(tmp_path / "enc.pt")
    loaded = load_network(tmp_path / "enc.pt")
    reference = random_network(loaded, init_seed=9)
    assert {k: v.shape for k, v in state_tensors(reference.model).items()} == {
        k: v.shape for k, v in state_tensors(loaded.model).items()}


def test_frozen_encoder_keeps_cka_one_on_real_hc18(test_data, tmp_path):
    """Real data: after a few steps with the encoder frozen, encoder layers are unchanged (CKA 1), decoder not."""
    manifest = open_manifest("hc18_fetal_head", test_data / "hc18_fetal_head")
    train = image_batches(manifest, "training", spatial_size=[96, 96], batch_size=4, max_images=4, seed=0,
                          with_label=True, divisor=4)
    evaluation = image_batches(manifest, "test", spatial_size=[96, 96], batch_size=4, max_images=8, seed=0,
                               divisor=4)
    source = build_dynunet(2, filters=FILTERS, init_seed=11)
    torch.save(source.state_dict(), tmp_path / "source.pt")
    network = build_dynunet(2, filters=FILTERS, init_seed=0)
    transfer = ApplyTransfer(network, "encoder_frozen", source_checkpoint=str(tmp_path / "source.pt"))
    optimizer = torch.optim.Adam(transfer.param_groups(0.01), lr=0.01)
    before = copy.deepcopy(network)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    network.train()
    for _ in range(3):
        optimizer.zero_grad()
        loss = loss_function(network(train[0]["image"]), train[0]["label"])
        loss.backward()
        optimizer.step()
    rows = {row["layer"]: row for row in layer_cka(before, network, evaluation, "all")}
    for name in ("input_block", "downsamples.0", "bottleneck"):
        assert rows[name]["cka"] == pytest.approx(1.0, abs=1e-6), rows[name]
    for name in ("upsamples.0", "upsamples.1"):
        assert rows[name]["cka"] < 1 - 1e-6, rows[name]
