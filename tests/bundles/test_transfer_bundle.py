"""Every transfer strategy through the 2D and 3D bundles: the right tensors are loaded, frozen and trained."""

import json

import pytest
import torch

from medtransfer.networks import build_dynunet, parts, state_tensors
from medtransfer.transfer import STRATEGIES
from tests.bundles.conftest import TINY, make_workflow
from tests.conftest import error_text

SEED = 0


@pytest.fixture(scope="module")
def source_checkpoints(tmp_path_factory):
    """A 'pretrained' network per dimensionality: same architecture, other weights than any run's seed."""
    folder = tmp_path_factory.mktemp("sources")
    paths = {}
    for dims in (2, 3):
        network = build_dynunet(dims, filters=TINY[dims]["filters"], init_seed=1234)
        paths[dims] = folder / f"pretrained_{dims}d.pt"
        torch.save(network.state_dict(), paths[dims])  # a plain state dict, as a finished run's model.pt
    return paths


def _workflow(dims, strategy, output, source=None, **extra):
    settings = {**TINY[dims], "max_epochs": 1, "iterations_per_epoch": 3, "seed": SEED, **extra}
    if source is not None:
        settings["source_checkpoint"] = str(source)
    return make_workflow(dims, configs=("train.yaml", f"transfer/{strategy}.yaml"), output_dir=str(output), **settings)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_strategy_loads_freezes_and_trains_the_parts_it_names(dims, strategy, source_checkpoints, tmp_path,
                                                             medtransfer_home):
    spec = STRATEGIES[strategy]
    source = source_checkpoints[dims] if spec.needs_checkpoint else None
    flow = _workflow(dims, strategy, tmp_path / "run", source)
    network = flow.parser.get_parsed_content("network")
    flow.parser.get_parsed_content("transfer").apply()

    pretrained = torch.load(source_checkpoints[dims], weights_only=True)
    fresh = state_tensors(build_dynunet(dims, filters=TINY[dims]["filters"], init_seed=SEED))
    tensors = state_tensors(network)
    split = parts(network)
    loaded_parts = set(spec.load) | set(spec.optional_load)  # same head shape here, so `full` loads it
    for part, names in split.items():
        for name in names:
            expected = pretrained[name] if part in loaded_parts else fresh[name]
            assert torch.equal(tensors[name], expected), (strategy, part, name)

    before = {name: t.detach().clone() for name, t in tensors.items()}
    flow.run()
    after = state_tensors(network)
    frozen = {name for part in spec.freeze for name in split[part]}
    trainable = [name for name, p in network.named_parameters() if name not in frozen]
    for name in frozen:
        assert torch.equal(after[name], before[name]), f"frozen {name} moved"
    changed = [name for name in trainable if not torch.equal(after[name], before[name])]
    assert len(changed) >= 0.9 * len(trainable), f"only {len(changed)} of {len(trainable)} trainable tensors changed"

    report = json.loads((tmp_path / "run" / "transfer.json").read_text())
    assert report["strategy"] == strategy
    for part, names in split.items():
        counts = report["counts"][part]
        if part in loaded_parts:
            assert counts.get("loaded") == len(names)
        else:
            assert counts.get("loaded", 0) == 0 and counts.get("kept") == len(names)
        params = [n for n in names if n in dict(network.named_parameters())]
        assert counts.get("frozen", 0) == (len(params) if part in spec.freeze else 0)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["transfer"]["counts"] == report["counts"] and record["config"]["strategy"] == strategy


def test_random_encoder_frozen_is_the_same_encoder_for_the_same_seed(tmp_path, medtransfer_home):
    encoders = []
    for index, seed in enumerate((7, 7, 8)):
        flow = _workflow(2, "random_encoder_frozen", tmp_path / f"run{index}", seed=seed)
        flow.parser.get_parsed_content("transfer").apply()
        network = flow.parser.get_parsed_content("network")
        encoders.append({n: state_tensors(network)[n] for n in parts(network)["encoder"]})
    assert all(torch.equal(encoders[0][n], encoders[1][n]) for n in encoders[0])
    assert not all(torch.equal(encoders[0][n], encoders[2][n]) for n in encoders[0])


def test_resumed_run_does_not_reapply_the_transfer(source_checkpoints, tmp_path, medtransfer_home):
    from ignite.engine import Events

    output = tmp_path / "run"
    flow = _workflow(2, "encoder", output, source_checkpoints[2], max_epochs=2)

    def crash(_engine):
        raise KeyboardInterrupt

    flow.trainer.add_event_handler(Events.EPOCH_STARTED(once=2), crash)
    with pytest.raises(KeyboardInterrupt):
        flow.run()
    trained_encoder = torch.load(output / "checkpoint.pt", weights_only=True)["model"]
    resumed = _workflow(2, "encoder", output, source_checkpoints[2], max_epochs=2)
    network = resumed.parser.get_parsed_content("network")
    transfer = resumed.parser.get_parsed_content("transfer")
    resumed.trainer.add_event_handler(
        Events.EPOCH_STARTED(once=2),
        lambda _e: [
            assert_equal(state_tensors(network)[n], trained_encoder[n]) for n in parts(network)["encoder"]
        ],
    )
    resumed.run()
    assert transfer.report["resumed"] is True
    assert json.loads((output / "run.json").read_text())["transfer"]["resumed"] is True


def assert_equal(a, b):
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "strategy, make_source, message",
    [
        ("encoder", lambda p: torch.save(build_dynunet(3, filters=[8, 16, 32]).state_dict(), p), "3D"),
        ("encoder", lambda p: torch.save(build_dynunet(2, filters=[4, 8, 16]).state_dict(), p), "other shapes"),
        ("encoder", lambda p: p.write_bytes(b"\x80\x02garbage"), "corrupted"),
        ("full", lambda p: torch.save({"model": Unpicklable()}, p), "pickled"),
    ],
)
def test_bad_checkpoints_are_refused_with_clear_errors(strategy, make_source, message, tmp_path, medtransfer_home):
    source = tmp_path / "bad.pt"
    make_source(source)
    flow = _workflow(2, strategy, tmp_path / "run", source)
    with pytest.raises(Exception) as excinfo:
        flow.run()
    text = error_text(excinfo.value)
    assert "bad.pt" in text and message in text, text[-600:]


def test_unknown_strategy_and_missing_checkpoint(tmp_path, medtransfer_home):
    flow = make_workflow(2, output_dir=str(tmp_path / "a"), strategy="encoders", **TINY[2])
    with pytest.raises(Exception) as excinfo:
        flow.run()
    assert "unknown transfer strategy 'encoders'; one of: scratch, encoder" in error_text(excinfo.value)
    flow = _workflow(2, "encoder_frozen", tmp_path / "b")
    with pytest.raises(Exception) as excinfo:
        flow.run()
    assert "pass --source_checkpoint" in error_text(excinfo.value)


class Unpicklable:
    """Stands for arbitrary code in a pickle: weights_only loading must refuse it."""
