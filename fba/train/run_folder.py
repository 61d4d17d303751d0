"""Claiming a run folder before a run writes to it: the lock, the fresh-run guard and the sweep of partial files.

A fresh run into a folder that holds another run's checkpoints is refused unless ``--overwrite`` says to replace
it (``--resume`` continues it); ``--resume`` itself never deletes a checkpoint. Partial files a killed process
left behind (our atomic writes' ``.<name>.<pid>-<hex>.tmp`` and checkpoints' ``.tmp-epoch_*`` folders) are removed
when the next run claims the folder (docs/reliability.md).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from fba.train.checkpoint import LATEST, complete_tags
from fba.train.run_lock import RunLock
from fba.errors import InputError

_ATOMIC_TEMPORARY = re.compile(r"^\..+\.(\d+)-[0-9a-f]{8}\.tmp$")
_CHECKPOINT_TEMPORARY = re.compile(r"^\.tmp-epoch_\d+(_step_\d+)?$")  # epoch-end and mid-epoch checkpoints


class RunFolderInUseError(InputError):
    """A fresh run aimed at a folder that holds another run's checkpoints."""


def claim_run_folder(output_dir: Path, rank: int, resume: bool, overwrite: bool) -> RunLock | None:
    """Lock ``output_dir`` (rank 0), refuse to start over another run's checkpoints unless ``overwrite`` or
    ``resume``, and sweep partial files; returns rank 0's lock (None on other ranks)."""
    lock = RunLock(output_dir).acquire() if rank == 0 else None
    try:
        if not (resume or overwrite):
            refuse_foreign_checkpoints(output_dir)
        if rank == 0:
            for path in sweep_partial_files(output_dir):
                print(f"removed {path}, a partial file of a killed run")
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def refuse_foreign_checkpoints(output_dir: Path) -> None:
    checkpoint_dir = output_dir / "checkpoints"
    tags = complete_tags(checkpoint_dir)
    if tags or (checkpoint_dir / LATEST).is_file():
        listed = ", ".join(tags[-3:]) if tags else LATEST
        raise RunFolderInUseError(
            f"{output_dir} holds another run's checkpoints ({listed}): continue it with --resume, replace it with "
            "--overwrite, or choose another train.output_dir"
        )


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_partial_files(output_dir: Path) -> list[Path]:
    """Remove what a killed writer left in ``output_dir`` and its checkpoints folder: temporaries of
    :func:`fba.utils.atomic.atomic_path` whose process is gone and unpublished checkpoint folders. Returns them."""
    removed = []
    for folder in (output_dir, output_dir / "checkpoints"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = _ATOMIC_TEMPORARY.match(path.name)
            if match and path.is_file() and not _alive(int(match.group(1))):
                path.unlink(missing_ok=True)
                removed.append(path)
            elif _CHECKPOINT_TEMPORARY.match(path.name) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed
