"""Where a path from a manifest, a scanned folder, a segment input or a study file may lead: inside its root.

A manifest (or a study file, or a folder handed over by a collaborator) is input, not configuration, so a path
in it is resolved the way the operating system will open it, symlinks followed, and refused when the result
lies outside the root it was declared against: ``"image": "../../etc/hostname"``, ``"/etc/passwd"`` or
``images/a.nii.gz -> /home/someone/scan.nii.gz``. The refusal comes before anything is read, as one line that
names the key, the path, the resolved target and the root.

A user who means it passes ``--allow-outside-root``: the command prints that it is on, sets
``MEDTRANSFER_ALLOW_OUTSIDE_ROOT=1`` for itself and its child processes (every run of a study), and each
training run records ``"allow_outside_root": true`` in its run.json.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from medtransfer.errors import MedtransferError

ALLOW_ENV = "MEDTRANSFER_ALLOW_OUTSIDE_ROOT"
ALLOW_FLAG = "--allow-outside-root"


class OutsideRootError(MedtransferError, ValueError):
    """A path that resolves (after symlinks) outside the root it was declared against."""


def outside_root_allowed() -> bool:
    return os.environ.get(ALLOW_ENV, "") not in ("", "0")


def allow_outside_root(stream=None) -> None:
    """Switch the confinement off for this process and the processes it starts, and say so."""
    os.environ[ALLOW_ENV] = "1"
    print(f"medtransfer: {ALLOW_FLAG}: paths may resolve outside their data root; every run records "
          f"allow_outside_root in its run.json", file=stream or sys.stderr, flush=True)


def is_inside(target: Path, root: Path) -> bool:
    """`target` (already resolved) is `root` (already resolved) or lies below it."""
    return target == root or root in target.parents


def confined(root: str | os.PathLike, entry: str | os.PathLike, key: str, where: str,
             allow: bool | None = None, flag: str = ALLOW_FLAG) -> Path:
    """`root / entry` (an absolute `entry` as it is), refused unless its resolved target lies inside the resolved
    root. Returns the path as written (not the resolved target), so that names derived from it stay the user's.

    `key` says which entry this is (``training[3].image``), `where` the file or folder it came from; `flag` is
    the option that lifts the refusal (``--allow-outside-root``; ``--trusted`` for a study's bundle)."""
    root = Path(root)
    path = Path(entry) if os.path.isabs(entry) else root / entry
    allowed = outside_root_allowed() if allow is None else allow
    if allowed:
        return path
    real_root = root.resolve()
    target = path.resolve()
    if not is_inside(target, real_root):
        via = "" if target == path.absolute() else f" resolves to {target}, which"
        raise OutsideRootError(f"{where}: {key} {str(entry)!r}{via} lies outside the root {real_root}; "
                               f"refused before reading it (pass {flag} if you mean it)")
    return path


def confined_tree(root: str | os.PathLike, folder: str | os.PathLike, where: str,
                  allow: bool | None = None) -> None:
    """Every entry of `folder` (one level) resolves inside `root`: the files of a DICOM series folder."""
    for entry in sorted(Path(folder).iterdir()):
        confined(root, entry.absolute(), "file", where, allow=allow)
