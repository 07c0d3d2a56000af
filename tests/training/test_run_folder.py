"""RunFolder: the one reader of a run folder (record, finished + checksum, network from the recorded config)."""

import json

import pytest
import torch
from monai.networks.nets import DynUNet, FlexibleUNet

from medtransfer.atomic import save_torch, sha256_of
from medtransfer.networks import NetworkConfigError, build_dynunet, build_from_config, total_stride
from medtransfer.training import RunDirectory, RunFolder, load_weights
from medtransfer.training.run_folder import RunNotFinishedError, WrongTaskError

FILTERS = [4, 8, 16]


def _segmentation_run(folder, filters=FILTERS, spatial_dims=2):
    params = {"task": "segmentation", "spatial_dims": spatial_dims, "filters": filters, "seed": 3}
    run = RunDirectory(folder, params).prepare()
    network = build_dynunet(spatial_dims, filters=filters, init_seed=3)
    save_torch(run.model_path, network.state_dict())
    run.write_record({"status": "finished", "model_sha256": sha256_of(run.model_path)})
    return network


def _pretraining_run(folder):
    params = {"task": "pretraining", "spatial_dims": 2, "filters": FILTERS}
    run = RunDirectory(folder, params).prepare()
    weights = folder / "pretrained.pt"
    save_torch(weights, {"medtransfer_checkpoint": 1, "state_dict": {}})
    run.write_record({"status": "finished",
                      "pretraining": {"final": {"epoch": 1, "path": "pretrained.pt", "sha256": sha256_of(weights)}}})


def test_finished_segmentation_run_and_its_network(tmp_path):
    trained = _segmentation_run(tmp_path / "run")
    folder = RunFolder(tmp_path / "run")
    record, weights = folder.check_finished("segmentation")
    assert weights == tmp_path / "run" / "model.pt"
    assert record["config"]["filters"] == FILTERS
    assert folder.finished("finetune") == record  # the study's name for the same kind
    assert folder.finished() == record  # default: the run's own task
    network = folder.build_network()
    assert isinstance(network, DynUNet)
    assert [int(f) for f in network.filters] == FILTERS
    load_weights(network, weights)  # strict: every tensor of the recorded architecture fits
    for name, tensor in trained.state_dict().items():
        assert torch.equal(network.state_dict()[name], tensor)


def test_changed_weights_are_not_finished(tmp_path):
    _segmentation_run(tmp_path / "run")
    weights = tmp_path / "run" / "model.pt"
    weights.write_bytes(weights.read_bytes() + b"x")
    folder = RunFolder(tmp_path / "run")
    assert folder.finished("segmentation") is None
    with pytest.raises(RunNotFinishedError, match="sha256 differs"):
        folder.check_finished("segmentation")


def test_unfinished_missing_and_unreadable_records(tmp_path):
    with pytest.raises(RunNotFinishedError, match="no run.json"):
        RunFolder(tmp_path).check_finished("segmentation")
    run = RunDirectory(tmp_path / "running", {"task": "segmentation", "spatial_dims": 2, "filters": FILTERS})
    run.prepare()  # status "running"
    with pytest.raises(RunNotFinishedError, match="not finished .status 'running'.; its model.pt is provisional"):
        RunFolder(run.path).check_finished("segmentation")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text('{"status": "fini')  # a run killed mid-write
    assert RunFolder(tmp_path / "broken").record is None
    assert RunFolder(tmp_path / "broken").finished("segmentation") is None
    with pytest.raises(RunNotFinishedError, match="not a readable run record"):
        RunFolder(tmp_path / "broken").check_finished("segmentation")


def test_record_without_checksum_is_not_finished(tmp_path):
    _segmentation_run(tmp_path / "run")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    del record["model_sha256"]
    (tmp_path / "run" / "run.json").write_text(json.dumps(record))
    with pytest.raises(RunNotFinishedError, match="records no sha256 for model.pt"):
        RunFolder(tmp_path / "run").check_finished("segmentation")


def test_pretraining_run_is_finished_as_pretraining_only(tmp_path):
    _pretraining_run(tmp_path / "pre")
    folder = RunFolder(tmp_path / "pre")
    assert folder.weights_path() == tmp_path / "pre" / "pretrained.pt"
    assert folder.finished("pretrain")["status"] == "finished"
    assert folder.finished("segmentation") is None
    with pytest.raises(WrongTaskError, match="starting point for transfer") as raised:
        folder.check_finished("segmentation")
    assert raised.value.task == "pretraining"  # callers read the field, not the message
    assert RunFolder.containing(tmp_path / "pre" / "checkpoints" / "epoch_0001.pt").path == tmp_path / "pre"
    assert RunFolder.containing(tmp_path / "elsewhere.pt") is None
    with pytest.raises(ValueError, match="unknown run kind"):
        folder.finished("classification")


def test_network_comes_from_the_record_never_a_default():
    with pytest.raises(NetworkConfigError, match="neither filters"):
        build_from_config({"spatial_dims": 2})  # the old reader silently built the 3D bundle's filters here
    with pytest.raises(NetworkConfigError, match="spatial_dims"):
        build_from_config({"filters": FILTERS})
    resnet = build_from_config({"spatial_dims": 2, "backbone": "resnet18"})
    assert isinstance(resnet, FlexibleUNet)
    seeded = [build_from_config({"spatial_dims": 3, "filters": FILTERS}, init_seed=5) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(seeded[0].state_dict().values(), seeded[1].state_dict().values()))


def test_total_stride_one_definition():
    assert total_stride([16, 32, 64, 128, 256]) == 16  # the 2D bundle's filters
    assert total_stride({"spatial_dims": 3, "filters": [16, 32, 64, 128]}) == 8  # the 3D bundle's
    network = build_dynunet(2, filters=[4, 8, 16, 32])
    assert total_stride(network) == 8
    assert total_stride({"backbone": "resnet18"}) == 32
    resnet = build_from_config({"spatial_dims": 2, "backbone": "resnet18"}).eval()
    assert total_stride(resnet) == 32
    with torch.no_grad():  # the stride is real: 32 fits, 48 does not
        assert resnet(torch.zeros(1, 1, 64, 64)).shape == (1, 2, 64, 64)
        with pytest.raises(RuntimeError):
            resnet(torch.zeros(1, 1, 48, 48))
    with pytest.raises(NetworkConfigError):
        total_stride({"spatial_dims": 2})
