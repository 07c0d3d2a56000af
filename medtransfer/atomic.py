"""Atomic file writes: a crash leaves either the old file or the new one, never half of either."""

from __future__ import annotations

import hashlib
import io
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
    except BaseException as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.errno is not None and not error.filename:  # a full disk: say where
            raise OSError(error.errno, error.strerror or os.strerror(error.errno), str(path)) from error
        raise


_RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths in one step


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the file system cannot exchange
        return False
    raise OSError(code, os.strerror(code), str(second))


def replace_folder(new: Path, target: Path) -> None:
    """Put the complete folder `new` at `target`. An existing `target` stays whole until the new one takes its
    place: the two are exchanged in one step, after which `new` holds the previous folder (the caller removes it).
    Where the file system cannot exchange, the previous folder is first renamed aside (a crash then leaves it
    there, named ``.<name>.previous-<pid>``, rather than removed)."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        return
    if _exchange(new, target):
        return
    aside = target.with_name(f".{target.name}.previous-{os.getpid()}")
    os.replace(target, aside)
    os.replace(new, target)
    os.replace(aside, new)


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
    """Serialised in memory first: a full disk then fails as an OSError naming the file, not inside torch's zip
    writer (which reports it as "unexpected pos")."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    atomic_write(Path(path), lambda stream: stream.write(data))


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
