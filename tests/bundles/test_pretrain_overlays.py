"""Pretraining wiring: one shared pretrain.yaml, one-line objective overlays, handlers chosen by name."""

import warnings

import pytest
import yaml
from monai.bundle import ConfigParser

from medtransfer.pretraining.objectives import OBJECTIVES
from tests.bundles.conftest import bundle_dir

# handlers that log or write files: the main process only, never a DDP rank > 0
MAIN_PROCESS_ONLY = {"StatsHandler", "TensorBoardStatsHandler", "medtransfer.handlers.RunRecord",
                     "medtransfer.handlers.PretrainingCheckpoints", "medtransfer.handlers.TransferabilityScore"}


def _parser(spatial_dims, *names):
    configs = bundle_dir(spatial_dims) / "configs"
    with warnings.catch_warnings():  # MONAI's config-security advisory, on every parse
        warnings.simplefilter("ignore")
        return ConfigParser(ConfigParser.load_config_files([str(configs / name) for name in names]))


def _targets(parser, list_id):
    """The `_target_` of every handler a list names (each entry an @reference to train#handler#...)."""
    targets = []
    for entry in parser[list_id]:
        assert isinstance(entry, str) and entry.startswith("@train#handler#"), f"{list_id}: {entry!r} is not by name"
        handler = parser[entry[1:]]
        while isinstance(handler, str) and handler.startswith("@"):  # e.g. transfer: "@transfer"
            handler = parser[handler[1:]]
        targets.append(handler["_target_"])
    return targets


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_every_objective_overlay_is_one_line_naming_its_objective(spatial_dims):
    folder = bundle_dir(spatial_dims) / "configs" / "pretrain"
    assert sorted(path.stem for path in folder.glob("*.yaml")) == sorted(OBJECTIVES)
    for objective in OBJECTIVES:
        path = folder / f"{objective}.yaml"
        assert yaml.safe_load(path.read_text()) == {"pretraining#name": objective}
        assert len([line for line in path.read_text().splitlines() if not line.startswith("#")]) == 1
        parser = _parser(spatial_dims, "train.yaml", "pretrain.yaml", f"pretrain/{objective}.yaml")
        assert parser.get_parsed_content("objective") == objective  # what run.json records
        assert parser["run_params#task"] == "pretraining"
        assert parser["pretraining#_target_"] == "medtransfer.pretraining.build_objective"


def test_objective_overlay_without_the_shared_file_fails_loudly():
    """The pre-refactor two-file command must not silently run a segmentation training."""
    with pytest.raises(KeyError, match="pretraining"):
        _parser(2, "train.yaml", "pretrain/reconstruction.yaml")


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("overlay", [(), ("transfer/encoder.yaml",), ("pretrain.yaml", "pretrain/reconstruction.yaml")])
def test_ranks_above_zero_get_no_logging_handlers(spatial_dims, overlay):
    """multi_gpu_train.yaml gives ranks > 0 train#replicated_handlers only: chosen by name, so an overlay that
    changes the handler list (pretraining) cannot move TensorBoard onto every rank."""
    parser = _parser(spatial_dims, "train.yaml", *overlay, "multi_gpu_train.yaml")
    every_rank = _targets(parser, "train#replicated_handlers")
    main_only = _targets(parser, "train#main_process_handlers")
    assert not MAIN_PROCESS_ONLY & set(every_rank)
    assert "TensorBoardStatsHandler" in main_only and "medtransfer.handlers.RunRecord" in main_only
    assert "medtransfer.handlers.ResumableCheckpoint" in every_rank and "LrScheduleHandler" in every_rank
    expression = parser["train#trainer#train_handlers"]
    assert "@train#replicated_handlers" in expression and "[:" not in expression
    if "pretrain.yaml" in overlay:
        assert "medtransfer.handlers.PretrainingCheckpoints" in main_only
        assert not any("Validation" in target for target in every_rank)  # pretraining validates nothing
    else:
        assert every_rank[0] == "medtransfer.handlers.ApplyTransfer"
        assert any("Validation" in target for target in every_rank)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_run_params_record_the_transferability_manifest_by_identity_not_path(spatial_dims, tmp_path):
    """A study moved to another checkout (the manifest read from another path) still resumes its pretrainings;
    a manifest with other content is another run."""
    import json
    import shutil

    from tests.conftest import REPO_ROOT

    shipped = REPO_ROOT / "data_manifests" / "synthetic_2d.json"
    copy = tmp_path / "elsewhere" / "synthetic_2d.json"
    copy.parent.mkdir()
    shutil.copy(shipped, copy)
    changed = tmp_path / "changed.json"
    content = json.loads(shipped.read_text())
    content["test"] = content["test"][:-1]
    changed.write_text(json.dumps(content))
    identities = []
    for path in (shipped, copy, changed, None):
        parser = _parser(spatial_dims, "train.yaml", "pretrain.yaml", "pretrain/reconstruction.yaml")
        parser["transferability_manifest"] = None if path is None else str(path)
        identities.append(parser.get_parsed_content("run_params#transferability_manifest"))
    assert identities[0] == identities[1] and identities[0].startswith("synthetic_2d@")
    assert identities[2] != identities[0] and identities[3] is None
    assert str(tmp_path) not in json.dumps(identities)
