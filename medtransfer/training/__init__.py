"""Run folders (written by RunDirectory, read by RunFolder), resume, and safe weight loading."""

from medtransfer.training.precision import (
    PRECISIONS,
    Capabilities,
    PrecisionChoice,
    PrecisionError,
    PrecisionInferer,
    choose_precision,
    detect_capabilities,
    resolve_precision,
)
from medtransfer.training.run_directory import RunDirectory, config_hash
from medtransfer.training.run_folder import RunDirectoryError, RunFolder, read_run_record
from medtransfer.training.weights import WeightsError, load_weights, read_state_dict

__all__ = [
    "PRECISIONS",
    "Capabilities",
    "PrecisionChoice",
    "PrecisionError",
    "PrecisionInferer",
    "choose_precision",
    "detect_capabilities",
    "resolve_precision",
    "RunDirectory",
    "RunDirectoryError",
    "RunFolder",
    "WeightsError",
    "config_hash",
    "load_weights",
    "read_run_record",
    "read_state_dict",
]
