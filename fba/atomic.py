"""Files that are either wholly written or not there at all.

Checkpoints, exported models, features files, caption files, the text cache and benchmark results are all
written the same way: into a temporary file beside the target, fsynced, then renamed over it. A run killed at
any moment leaves the old file or the new one, never half of one, and a reader never sees a partial file.
A write that fails (a full disk, a quota, an I/O error) removes its temporary and raises :class:`DiskWriteError`,
whose one-line message names the file and the free space left (docs/reliability.md, "Atomic writes").
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it replaces ``path`` durably, on any
    error it is removed. The name starts with a dot and ends in ``.tmp``, so globs for the real files skip it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
