"""Files that are either wholly written or not there at all.

Checkpoints, exported models, features files, caption files, the text cache and benchmark results are all
written the same way: into a temporary file beside the target, fsynced, then renamed over it. A run killed at
any moment leaves the old file or the new one, never half of one, and a reader never sees a partial file.
A write that fails (a full disk, a quota, an I/O error) removes its temporary and raises :class:`DiskWriteError`,
whose one-line message names the file and the free space left (docs/reliability.md, "Atomic writes"). The
temporaries a killed writer left are swept by the next write of the same file.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from fba.errors import InputError


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory (which makes a rename inside it durable)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskWriteError(OSError):
    """Writing a file failed for lack of space or an I/O error; the message names the file and the free space."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def free_space(path: Path) -> str:
    """Free space of the file system holding ``path`` (or its nearest existing parent), e.g. '1.2 GiB'."""
    for folder in (path, *path.parents):
        if folder.exists():
            free = shutil.disk_usage(folder).free
            for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
                if free < 1024 or unit == "TiB":
                    return f"{free:.1f} {unit}" if unit != "B" else f"{free} B"
                free /= 1024
    return "unknown"


def disk_write_error(path: Path, err: BaseException) -> DiskWriteError | None:
    """A :class:`DiskWriteError` for ``err`` when it is a write failure (an OSError of the disk kind, or torch's
    RuntimeError around one), else None."""
    if isinstance(err, DiskWriteError):
        return err
    if isinstance(err, OSError) and err.errno in _DISK_ERRNOS:
        reason = os.strerror(err.errno)
    elif isinstance(err, RuntimeError) and ("inline_container" in str(err) or "PytorchStreamWriter" in str(err)):
        reason = "the write failed (torch: " + str(err).strip().splitlines()[0][:120] + ")"
    else:
        return None
    return DiskWriteError(getattr(err, "errno", None) or errno.EIO,
                          f"cannot write {path}: {reason}; {free_space(path.parent)} free there")


class OutputPathError(InputError):
    """An output path that cannot be written: checked before the work that would fill it starts."""


def check_output_path(path: str | os.PathLike, option: str, folder: bool = False) -> Path:
    """Refuse ``path`` (given as ``option``) now, before hours of work end in a failed write: a file where a
    folder must go or the reverse, a file among its parents, or a first existing parent that cannot be written."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise OutputPathError(f"{option} {path}: is a {'file' if folder else 'folder'}; give a "
                              f"{'folder' if folder else 'file'} path")
    parent = path if folder and path.is_dir() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{option} {path}: {parent} is a file, so nothing can be written under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} {path}: {parent} is not writable")
    return path


def sweep_stale_temporaries(path: Path) -> None:
    """Remove the temporaries a killed writer of ``path`` left beside it (their pid no longer runs)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*-*.tmp"):
        pid = tmp.name[len(path.name) + 2:].rsplit("-", 1)[0]
        if pid.isdigit() and not process_running(int(pid)):
            tmp.unlink(missing_ok=True)


def remove_orphans(folder: Path, prefix: str) -> None:
    """Remove the entries of ``folder`` named ``<prefix><pid>-...`` whose process no longer runs: what a process
    killed outright (SIGKILL, ``os._exit``) left of the temporaries it names after itself."""
    for entry in Path(folder).glob(f"{prefix}*-*"):
        pid = entry.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not process_running(int(pid)):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def process_running(pid: int) -> bool:
    """Whether ``pid`` names a live process (one of another user counts as live)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it replaces ``path`` durably, on any
    error it is removed. The name starts with a dot and ends in ``.tmp``, so globs for the real files skip it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        disk = disk_write_error(path, err)
        if disk is not None and disk is not err:
            raise disk from err
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
