"""One writer per folder: an exclusive, kill-safe lock for run, study and segment output folders.

Kept free of heavy imports (no torch) so that every process that writes a folder can take it cheaply.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from medtransfer.errors import FolderInUseError

LOCK_NAME = ".medtransfer.lock"
_HELD: dict[tuple[int, str], "FolderLock"] = {}  # (pid, folder): locks this process holds (re-entrant)


class FolderLock:
    """An exclusive lock on a folder for as long as one process writes it: ``flock`` on FOLDER/.medtransfer.lock.

    A second process asking for the same folder fails at once with "<what> FOLDER is in use by process N".
    The kernel drops the lock when its process dies (even by kill -9), so a lock file left by a dead process is
    simply taken over. Re-entrant within one process (several objects may guard the same folder in a test run);
    the file descriptor is close-on-exec, so commands the holder starts do not inherit the lock.
    """

    def __init__(self, folder: str | Path, what: str = "run folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def _key(self) -> tuple[int, str]:
        return os.getpid(), str(self.folder.resolve())

    def owner(self) -> str:
        try:
            return self.path.read_text().split()[0]
        except (OSError, IndexError):
            return "unknown"

    def acquire(self) -> "FolderLock":
        import fcntl

        key = self._key()
        if key in _HELD:
            return _HELD[key]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise FolderInUseError(f"{self.what} {self.folder} cannot be locked for writing: "
                                   f"{error.strerror or error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUseError(f"{self.what} {self.folder} is in use by process {self.owner()}; wait for it "
                                   "to finish, or stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        _HELD[key] = self
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        _HELD.pop(self._key(), None)
        try:
            os.close(self._fd)  # closing the only descriptor drops the flock; the file stays (harmless)
        finally:
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
