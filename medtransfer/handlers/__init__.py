"""Ignite/MONAI handlers used by the bundle configs."""

from medtransfer.handlers.checkpoint import (
    BestModelSaver,
    EarlyStopping,
    ResumableCheckpoint,
    ValidationWithEarlyStopping,
)
from medtransfer.handlers.metrics import CaseMetrics
from medtransfer.handlers.pretraining import PretrainingCheckpoints
from medtransfer.handlers.run_record import EpochLoss, RunRecord, TrainingProgress, batch_loss
from medtransfer.handlers.transfer import ApplyTransfer
from medtransfer.handlers.transferability import TransferabilityScore

__all__ = [
    "ApplyTransfer",
    "BestModelSaver",
    "CaseMetrics",
    "EarlyStopping",
    "EpochLoss",
    "PretrainingCheckpoints",
    "ResumableCheckpoint",
    "RunRecord",
    "TrainingProgress",
    "TransferabilityScore",
    "ValidationWithEarlyStopping",
    "batch_loss",
]
