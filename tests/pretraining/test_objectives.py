"""Each pretraining objective trains on real data (loss decreases) and its checkpoints feed the transfer strategies."""

import json

import pytest
import torch
from ignite.engine import Events

from medtransfer.handlers import ApplyTransfer
from medtransfer.networks import build_dynunet, parts, state_tensors
from medtransfer.pretraining import OBJECTIVES, nt_xent
from tests.bundles.conftest import make_workflow
from tests.conftest import REPO_ROOT, error_text

REAL = {
    2: {"data_manifest": "hc18_fetal_head", "folder": "hc18_fetal_head", "fraction": 0.25,
        "patch_size": [96, 96], "filters": [8, 16, 32, 64], "batch_size": 4},
    3: {"data_manifest": "msd_hippocampus", "folder": "msd_hippocampus", "fraction": 0.1,
        "patch_size": [32, 32, 32], "filters": [8, 16, 32], "batch_size": 2},
}
ITERATIONS = 16


def _pretrain(dims, objective, output, test_data, **extra):
    real = dict(REAL[dims])
    folder = real.pop("folder")
    flow = make_workflow(
        dims, configs=("train.yaml", "pretrain.yaml", f"pretrain/{objective}.yaml"), output_dir=str(output),
        data_root=str(test_data / folder), max_epochs=2, iterations_per_epoch=ITERATIONS // 2, num_samples=1,
        learning_rate=0.003, checkpoint_epochs=[1], **{**real, **extra},
    )
    losses = []
    flow.trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(_loss(e.state.output)))
    flow.run()
    return losses


def _loss(output) -> float:
    """The iteration's loss whether MONAI decollated the output into per-sample dicts or not."""
    first = output[0] if isinstance(output, list) else output
    return float(first["loss"])


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objective_trains_on_real_data_and_its_checkpoint_transfers(dims, objective, test_data, tmp_path,
                                                                     medtransfer_home):
    output = tmp_path / "pretrain"
    losses = _pretrain(dims, objective, output, test_data)
    assert len(losses) == ITERATIONS
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first, f"{objective} {dims}D loss did not decrease: {losses}"

    record = json.loads((output / "run.json").read_text())
    assert record["status"] == "finished" and record["config"]["objective"] == objective
    assert record["pretraining"]["source"]["manifest"] == REAL[dims]["data_manifest"]
    assert [c["epoch"] for c in record["pretraining"]["checkpoints"]] == [1]
    assert record["pretraining"]["final"]["epoch"] == 2

    target = build_dynunet(dims, filters=REAL[dims]["filters"], init_seed=0)
    fresh = state_tensors(build_dynunet(dims, filters=REAL[dims]["filters"], init_seed=0))
    checkpoint = torch.load(output / "pretrained.pt", weights_only=True)
    report = ApplyTransfer(target, "encoder", source_checkpoint=str(output / "pretrained.pt")).apply()
    encoder = parts(target)["encoder"]
    assert report["counts"]["encoder"]["loaded"] == len(encoder)
    for name, tensor in state_tensors(target).items():
        expected = checkpoint["state_dict"][name] if name in encoder else fresh[name]
        assert torch.equal(tensor, expected), name
    assert checkpoint["objective"] == objective and checkpoint["epoch"] == 2
    assert set(checkpoint["trained_parts"]) == ({"encoder"} if objective == "classification"
                                                else {"encoder", "decoder", "head"})


def test_nt_xent_equals_a_direct_computation():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    tau = 0.5
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    n = z.shape[0]
    total = 0.0
    for i in range(n):
        positive = (i + 5) % n
        numerator = torch.exp(z[i] @ z[positive] / tau)
        denominator = sum(torch.exp(z[i] @ z[k] / tau) for k in range(n) if k != i)
        total += -torch.log(numerator / denominator)
    # ConRec sums the two directions (mean over view-1 anchors + mean over view-2 anchors) = 2 × the 2B mean
    assert nt_xent(z1, z2, tau).item() == pytest.approx((2 * total / n).item(), rel=1e-5)
    # identical views give a lower loss than unrelated ones
    assert nt_xent(z1, z1.clone()) < nt_xent(z1, z2)


def test_contrastive_loss_refuses_a_batch_of_one(test_data, tmp_path, medtransfer_home):
    with pytest.raises(ValueError, match="at least 2 images per batch"):
        nt_xent(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(Exception) as excinfo:
        _pretrain(2, "contrastive_reconstruction", tmp_path / "run", test_data, batch_size=1)
    assert "at least 2 images per batch" in error_text(excinfo.value)


def test_supervised_objective_on_an_unlabelled_manifest_is_an_error(test_data, tmp_path, medtransfer_home):
    content = json.loads((REPO_ROOT / "data_manifests" / "hc18_fetal_head.json").read_text())
    for split in ("training", "validation", "test"):
        for case in content[split]:
            case.pop("label")
    manifest = tmp_path / "unlabelled.json"
    manifest.write_text(json.dumps(content))
    for objective in ("segmentation", "classification"):
        with pytest.raises(Exception) as excinfo:
            _pretrain(2, objective, tmp_path / objective, test_data, data_manifest=str(manifest))
        assert "supervised but the manifest has no labels" in error_text(excinfo.value)
    losses = _pretrain(2, "reconstruction", tmp_path / "rec", test_data, data_manifest=str(manifest))
    assert len(losses) == ITERATIONS  # self-supervised objectives work on images alone


def test_a_class_field_on_some_cases_only_is_an_error(test_data, tmp_path, medtransfer_home):
    content = json.loads((REPO_ROOT / "data_manifests" / "hc18_fetal_head.json").read_text())
    content["training"][0]["class"] = 1
    manifest = tmp_path / "classes.json"
    manifest.write_text(json.dumps(content))
    with pytest.raises(Exception) as excinfo:
        _pretrain(2, "classification", tmp_path / "run", test_data, data_manifest=str(manifest))
    assert "training cases have no 'class' field" in error_text(excinfo.value)


def test_segmentation_pretraining_on_one_label_via_label_map(test_data, tmp_path, medtransfer_home):
    output = tmp_path / "anterior"
    _pretrain(3, "segmentation", output, test_data, label_map={1: 1, 2: 0})
    record = json.loads((output / "run.json").read_text())
    assert record["pretraining"]["details"]["label_map"] == {"1": 1, "2": 0}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_colour_source_pretrains_and_transfers_into_a_grey_network(objective, tmp_path, medtransfer_home):
    """A colour (RGB) source manifest: the pretrained U-Net takes 3 channels (a reconstruction also gives 3), and
    its encoder loads into a grey target by the documented first-convolution rule (summed over channels)."""
    from tests.inference.test_export import _rgb_data

    data = tmp_path / "colour"
    manifest = _rgb_data(data, count=8)
    output = tmp_path / "pretrain"
    filters = [8, 16, 32]
    make_workflow(
        2, configs=("train.yaml", "pretrain.yaml", f"pretrain/{objective}.yaml"), output_dir=str(output),
        data_manifest=str(manifest), data_root=str(data), max_epochs=1, iterations_per_epoch=2, num_samples=1,
        patch_size=[32, 32], filters=filters, batch_size=2, checkpoint_epochs=[1],
    ).run()
    state = torch.load(output / "pretrained.pt", weights_only=True)["state_dict"]
    first = state["input_block.conv1.conv.weight"]
    assert first.shape[1] == 3
    if objective in ("reconstruction", "contrastive_reconstruction"):
        assert state["output_block.conv.conv.weight"].shape[0] == 3  # every channel reconstructed
    target = build_dynunet(2, filters=filters, init_seed=0)
    report = ApplyTransfer(target, "encoder", source_checkpoint=str(output / "pretrained.pt")).apply()
    assert torch.allclose(target.input_block.conv1.conv.weight, first.sum(dim=1, keepdim=True))
    assert any("summed" in note for note in report["adapter_notes"]), report["adapter_notes"]
