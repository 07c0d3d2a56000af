"""`medtransfer train` and `medtransfer predict`: thin entry points with the bundle configs' own keys."""

import json
import sys

import pytest

from medtransfer import registry
from medtransfer.cli import build_parser, main
from medtransfer.training.cli_commands import train_command


def test_train_picks_the_readme_config_files():
    bundle = registry.bundle_dir("binary_seg_3d")
    plain = train_command("binary_seg_3d", None, None, ["--max_epochs", "2"])
    assert plain[:4] == [sys.executable, "-m", "monai.bundle", "run"]
    assert plain[4:] == ["--config_file", str(registry.train_config(bundle)), "--bundle_root", str(bundle),
                         "--max_epochs", "2"]
    tune = train_command("binary_seg_3d", "encoder_frozen", None, [])
    assert eval(tune[5]) == list(registry.transfer_config_files(bundle, "encoder_frozen"))  # noqa: S307 (a list)
    pre = train_command("binary_seg_3d", None, "reconstruction", [])
    assert eval(pre[5]) == list(registry.pretrain_config_files(bundle, "reconstruction"))  # noqa: S307
    with pytest.raises(registry.RegistryError, match="not both"):
        train_command("binary_seg_3d", "encoder", "reconstruction", [])
    with pytest.raises(registry.RegistryError):
        train_command("binary_seg_2d", "no_such_strategy", None, [])


def test_train_runs_the_bundle_and_refuses_a_misspelt_key(tmp_path, medtransfer_home, capfd):
    out = tmp_path / "run"
    code = main(["train", "--output_dir", str(out), "--max_epochs", "1", "--iterations_per_epoch", "1",
                 "--filters", "[8,16,32]", "--patch_size", "[64,64]", "--batch_size", "2", "--progress", "false"])
    assert code == 0
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished" and record["config"]["max_epochs"] == 1
    code = main(["train", "--output_dir", str(tmp_path / "other"), "--max_epoch", "1"])
    assert code != 0 and "did you mean --max_epochs" in capfd.readouterr().err
    assert not (tmp_path / "other" / "model.pt").exists()


def test_predict_is_segment():
    parser = build_parser()
    args = parser.parse_args(["predict", "runs/x", "scans/", "--output", "masks/"])
    assert args.handler.__name__ == parser.parse_args(["segment", "runs/x", "scans/", "-o", "m"]).handler.__name__
