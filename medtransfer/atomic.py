"""Atomic file writes: a crash leaves either the old file or the new one, never half of either."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; results should be readable like any other file
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def json_safe(value: Any) -> Any:
    """NaN/inf → None and tensors/numpy scalars → Python numbers, so files are strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return json_safe(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (os.PathLike, torch.device)):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON: {value!r}")


def save_json(path: str | os.PathLike, obj: Any) -> None:
    data = json.dumps(json_safe(obj), indent=2, allow_nan=False).encode() + b"\n"  # fails before touching the file
    atomic_write(Path(path), lambda stream: stream.write(data))


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(Path(path), lambda stream: torch.save(obj, stream))


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
