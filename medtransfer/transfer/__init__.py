"""Transfer strategies (what to load, what to freeze) and checkpoint adapters."""

from medtransfer.transfer.adapters import FORMATS, AdaptedCheckpoint, CheckpointError, detect_format, load_checkpoint
from medtransfer.transfer.freezing import FrozenParts
from medtransfer.transfer.strategies import STRATEGIES, Strategy, TransferError, copy_parts, get_strategy

__all__ = [
    "FORMATS",
    "STRATEGIES",
    "AdaptedCheckpoint",
    "CheckpointError",
    "FrozenParts",
    "Strategy",
    "TransferError",
    "copy_parts",
    "detect_format",
    "get_strategy",
    "load_checkpoint",
]
