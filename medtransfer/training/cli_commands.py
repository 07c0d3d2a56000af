"""`medtransfer train`: a thin entry point over `python -m monai.bundle run` with the bundle's own keys.

    medtransfer train [--bundle binary_seg_2d] [--strategy encoder | --pretrain contrastive_reconstruction]
                      --output_dir runs/x --max_epochs 5 ...

It picks the config files the way the README spells them (train.yaml, plus a transfer overlay or the shared
pretraining wiring and the objective's overlay, through medtransfer.registry) and hands every other argument to
MONAI unchanged, so the keys are exactly the bundle configs' (a misspelt one is refused by the run itself).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from medtransfer import registry


def train_command(bundle: str, strategy: str | None, pretrain: str | None, overrides: list[str]) -> list[str]:
    """The `monai.bundle run` command line `medtransfer train` runs."""
    if strategy and pretrain:
        raise registry.RegistryError("give --strategy (fine-tuning) or --pretrain (pretraining), not both")
    root = registry.bundle_dir(bundle)
    if pretrain:
        files = registry.pretrain_config_files(root, pretrain)
    elif strategy:
        files = registry.transfer_config_files(root, strategy)
    else:
        files = (str(registry.train_config(root)),)
    config = str(list(files)) if len(files) > 1 else files[0]
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--bundle_root", str(root),
            *overrides]


def _train(args: argparse.Namespace) -> int:
    overrides = [item for item in args.overrides if item != "--"]
    command = train_command(args.bundle, args.strategy, args.pretrain, overrides)
    print("running: " + " ".join(command[1:]), flush=True)
    return subprocess.call(command)


def register(commands) -> None:
    train = commands.add_parser(
        "train", help="train a bundle (python -m monai.bundle run with the bundle's keys)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--bundle", default="binary_seg_2d",
                       help="a packaged bundle name (binary_seg_2d, binary_seg_3d) or a bundle folder")
    train.add_argument("--strategy", help="fine-tune with this transfer strategy's overlay (needs --source_checkpoint)")
    train.add_argument("--pretrain", help="pretrain with this objective (segmentation, classification, "
                                          "reconstruction, contrastive_reconstruction)")
    train.add_argument("overrides", nargs=argparse.REMAINDER,
                       help="bundle keys as --key value (e.g. --output_dir runs/x --max_epochs 5), passed to MONAI")
    train.set_defaults(handler=_train)
