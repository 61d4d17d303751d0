"""One run per output folder: an exclusive OS file lock held for the run's whole life.

Two runs writing into one ``train.output_dir`` would replace each other's checkpoints, metrics and model.pt
without a word. Rank 0 of a run takes ``flock(LOCK_EX)`` on ``<output_dir>/.fba-run.lock``. The operating system
releases it when the process ends in any way (exit, exception, SIGKILL), so a lock is never stale and there is no
PID file to trust; the PID, host and start time written into the file are information for the message only.
A second run is refused at once with :class:`RunFolderLockedError` (docs/reliability.md, "Locking").
Locks on network file systems depend on the file system (NFSv4 and Lustre honour flock; some others do not).
"""
from __future__ import annotations

import fcntl
import functools
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from fba.errors import InputError

LOCK_FILE = ".fba-run.lock"


class RunFolderLockedError(InputError):
    """Another live process holds the run folder's lock."""


class RunLock:
    """The lock on one run folder; :meth:`release` (or the process ending) frees it."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunFolderLockedError(
                f"{self.folder} is in use by another run ({holder}); wait for it to end or use another "
                "train.output_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on host {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def releases_run_lock_on_error(init: Callable) -> Callable:
    """Decorate ``__init__`` of an object that stores a :class:`RunLock` as ``run_lock``: a failing constructor
    frees the lock at once instead of when the half-built object is collected."""

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except BaseException:
            lock = getattr(self, "run_lock", None)
            if lock is not None:
                lock.release()
            raise

    return wrapper
