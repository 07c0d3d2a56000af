"""Pretraining objectives, heads, losses and corruptions on the shared U-Net encoder."""

from medtransfer.pretraining.losses import ConRecLoss, nt_xent
from medtransfer.pretraining.objectives import OBJECTIVES, TRAINED_PARTS, Objective, build_objective

__all__ = ["OBJECTIVES", "TRAINED_PARTS", "ConRecLoss", "Objective", "build_objective", "nt_xent"]
