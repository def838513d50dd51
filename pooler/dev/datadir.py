"""``pooler up``'s data directory: usable or refused in one line, and owned by one ``up`` at a time.

Why: the data directory holds the embedded cluster, the generated password and (while ``up`` runs) a
lock. A directory that cannot be written to, or that another ``up`` is using, must be refused before
anything starts, with a line that says what to change — not a traceback from deep inside initdb, and
not a second Postgres fighting the first over the same files.

The lock is an ``flock`` on ``up.lock`` in the directory, held for the life of the process (the kernel
drops it when the process dies, however it dies, so a crash never leaves a stale lock). The file's
content — the holder's PID and, once it listens, its ports — is only for the message the next ``up``
prints.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO

__all__ = ["AlreadyRunningError", "DataDirError", "InstanceLock", "prepare_data_dir"]

LOCK_FILE = "up.lock"
_OPTION = "--data-dir (or POOLER_DATA_DIR)"


class DataDirError(Exception):
    """The data directory cannot be used; ``str()`` is the one line for the user."""


class AlreadyRunningError(DataDirError):
    """Another ``pooler up`` holds the data directory."""


def _describe(path: Path, exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return f"data directory {path} is on a read-only file system; pass a writable one with {_OPTION}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"data directory {path} is not writable ({exc.strerror}); pass a writable one with {_OPTION}"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"data directory {path} is not a directory (a file is in the way); pass another one with {_OPTION}"
    if exc.errno == errno.ENOSPC:
        return f"data directory {path}: no space left on the device; free some, or pass another one with {_OPTION}"
    return f"data directory {path} cannot be used ({exc.strerror or exc}); pass another one with {_OPTION}"


def prepare_data_dir(path: Path) -> Path:
    """Create ``path`` if needed and make sure we can write in it; raise DataDirError saying why not."""
    if path.exists() and not path.is_dir():
        raise DataDirError(_describe(path, OSError(errno.ENOTDIR, "not a directory")))
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DataDirError(_describe(path, exc)) from None
    return path


class InstanceLock:
    """Exclusive use of a data directory by this process; see the module docstring."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock, or raise AlreadyRunningError naming the holder's PID and ports."""
        try:
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        except OSError as exc:
            raise DataDirError(_describe(self.path.parent, exc)) from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                handle.close()
                raise DataDirError(_describe(self.path.parent, exc)) from None
            handle.seek(0)
            holder = handle.read()
            handle.close()
            raise AlreadyRunningError(self._already_running(holder)) from None
        self._file = handle
        self.record({})

    def _already_running(self, holder: str) -> str:
        try:
            info = json.loads(holder)
        except ValueError:
            info = {}
        pid = info.get("pid", "?")
        ports = info.get("ports") or {}
        where = (", ports " + ", ".join(f"{port} ({name})" for name, port in ports.items())) if ports else \
            " (still starting)"
        return (f"already running on {self.path.parent}, PID {pid}{where}: use that one, stop it (Ctrl-C in its "
                f"terminal, or kill {pid}), or pass another {_OPTION}")

    def record(self, ports: Mapping[str, int]) -> None:
        """Write our PID and ports for the next ``up`` that finds the directory taken."""
        if self._file is None:
            return
        try:
            self._file.seek(0)
            self._file.truncate()
            self._file.write(json.dumps({"pid": os.getpid(), "ports": dict(ports)}))
            self._file.flush()
        except OSError:
            pass  # only the other process's message loses detail

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None
