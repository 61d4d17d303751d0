"""Resumable training checkpoints, written so that a killed run never leaves a broken latest one (the plain
``model.pt`` that ``fba eval`` / ``fba embed`` load is :mod:`fba.model.model_file`).

Layout of ``<output_dir>/checkpoints``::

    epoch_0003/         DeepSpeed's files (module, ZeRO optimiser shards, scheduler, client state) + rng_rank<r>.pt
                        + final_evaluation.json in the final epoch's, once the run's last evaluation is done
    latest              the name of the newest complete checkpoint directory

Every rank writes into ``.tmp-epoch_0003``; after a barrier rank 0 fsyncs the files, renames the directory to
its final name and replaces ``latest`` through a fsynced temporary file and ``os.replace``. A run killed at any
point leaves either the previous ``latest`` or the new one, both complete; a stale ``.tmp-*`` directory is
removed by the next save. All ranks must see the same file system (one node, or a shared one across nodes).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from fba.utils.atomic import atomic_write_bytes, disk_write_error, fsync_path
from fba.distributed import world
from fba.errors import InputError
from fba.utils.safe_load import safe_torch_load

LATEST = "latest"
FINAL_EVALUATION = "final_evaluation.json"


class CheckpointMismatchError(InputError):
    """A checkpoint whose weights do not fit the model of the run resuming it (another data set or config)."""


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def fsync_tree(root: Path) -> None:
    """fsync every file under ``root`` and the directories themselves, so a rename publishes durable data."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))


def rng_state() -> dict:
    """Every random stream's state as tensors and plain data, so the file loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy = state["numpy"]
    if isinstance(numpy, dict):
        numpy = (numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                 numpy["cached_gaussian"])
    np.random.set_state(numpy)  # a tuple: an RNG file written before the states were tensors
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_tag(checkpoint_dir: str | Path) -> str | None:
    """The newest complete checkpoint's name, or None when there is none."""
    pointer = Path(checkpoint_dir) / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    if not tag or not (Path(checkpoint_dir) / tag).is_dir():
        raise FileNotFoundError(f"{pointer} names checkpoint {tag!r}, which does not exist in {checkpoint_dir}")
    return tag


def save_checkpoint(engine, checkpoint_dir: str | Path, tag: str, client_state: dict, keep: int = 2) -> Path:
    """Write a resumable checkpoint of ``engine`` (all ranks must call this) and point ``latest`` at it."""
    checkpoint_dir = Path(checkpoint_dir)
    rank = world()[0]
    tmp_tag = f".tmp-{tag}"
    tmp_dir, final_dir = checkpoint_dir / tmp_tag, checkpoint_dir / tag
    if rank == 0:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)
    _barrier()
    try:
        engine.save_checkpoint(str(checkpoint_dir), tag=tmp_tag, client_state=client_state, save_latest=False)
        torch.save(rng_state(), tmp_dir / f"rng_rank{rank}.pt")
    except (OSError, RuntimeError) as err:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # a partial checkpoint would fill the disk until the next save
        disk = disk_write_error(tmp_dir, err)
        if disk is None:
            raise
        raise disk from err
    _barrier()
    if rank == 0:
        fsync_tree(tmp_dir)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.rename(tmp_dir, final_dir)
        fsync_path(checkpoint_dir)
        atomic_write_bytes(checkpoint_dir / LATEST, f"{tag}\n".encode())
        _prune(checkpoint_dir, keep, tag)
    _barrier()
    return final_dir


def record_final_evaluation(checkpoint_dir: str | Path, tag: str, outcome: dict) -> None:
    """Mark the final checkpoint ``tag`` as evaluated (rank 0, after the final evaluation): the checkpoint is
    written before its evaluation, so a run killed during the evaluation resumes into it, and a resume of a
    finished run reads the outcome from here instead of evaluating again. JSON, never unpickled."""
    if world()[0] == 0:
        atomic_write_bytes(Path(checkpoint_dir) / tag / FINAL_EVALUATION, json.dumps(outcome).encode())
    _barrier()


def final_evaluation(checkpoint_dir: str | Path, tag: str) -> dict | None:
    """What :func:`record_final_evaluation` wrote into checkpoint ``tag`` (None: it was not evaluated)."""
    path = Path(checkpoint_dir) / tag / FINAL_EVALUATION
    if not path.is_file():
        return None
    try:
        outcome = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not the JSON a final evaluation writes ({err})") from None
    if not isinstance(outcome, dict) or not {"best_map", "best_eval", "last_eval"} <= outcome.keys():
        raise InputError(f"{path}: expected best_map, best_eval and last_eval")
    return outcome


def _prune(checkpoint_dir: Path, keep: int, newest: str) -> None:
    complete = sorted(p for p in checkpoint_dir.iterdir() if p.is_dir() and p.name.startswith("epoch_"))
    for old in complete[: max(len(complete) - max(keep, 1), 0)]:
        if old.name != newest:
            shutil.rmtree(old, ignore_errors=True)


def is_complete(folder: Path) -> bool:
    """A published checkpoint folder (renamed from its temporary name) with DeepSpeed's files and rank 0's RNG."""
    return (folder.is_dir() and folder.name.startswith("epoch_") and (folder / "rng_rank0.pt").is_file()
            and any(folder.glob("*model_states.pt")))


def complete_tags(checkpoint_dir: str | Path) -> list[str]:
    """Names of the complete checkpoints, oldest first."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    return sorted(p.name for p in checkpoint_dir.iterdir() if is_complete(p))


def resume_tag(checkpoint_dir: str | Path) -> tuple[str | None, str]:
    """The checkpoint ``--resume`` continues from and a sentence saying how it was chosen: the ``latest``
    pointer's, or without a pointer the newest complete one (None when there is none). Nothing is deleted."""
    checkpoint_dir = Path(checkpoint_dir)
    try:
        tag = latest_tag(checkpoint_dir)
        problem = f"{checkpoint_dir / LATEST} is missing"
    except FileNotFoundError as err:  # the pointer names a folder that is gone
        tag, problem = None, str(err)
    if tag is not None:
        return tag, f"resuming from {checkpoint_dir / tag} (the latest pointer)"
    tags = complete_tags(checkpoint_dir)
    if not tags:
        return None, f"no complete checkpoint in {checkpoint_dir}"
    return tags[-1], f"{problem}: resuming from the newest complete checkpoint, {checkpoint_dir / tags[-1]}"


def load_checkpoint(engine, checkpoint_dir: str | Path, tag: str | None = None) -> dict | None:
    """Restore checkpoint ``tag`` (default: :func:`resume_tag`'s) into ``engine`` and this rank's RNG; returns its
    client state (None: there is no checkpoint)."""
    if tag is None:
        tag, _ = resume_tag(checkpoint_dir)
    if tag is None:
        return None
    engine.checkpoint_engine = SafeCheckpointEngine(engine.checkpoint_engine)
    try:
        path, client_state = engine.load_checkpoint(str(checkpoint_dir), tag=tag)
    except RuntimeError as err:
        mismatch = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), None)
        if mismatch is None:
            raise
        raise CheckpointMismatchError(
            f"{Path(checkpoint_dir) / tag} does not fit this run's model ({mismatch}); was it trained on another "
            "data set or config? Resume with the run's own config.yaml, or start a new train.output_dir"
        ) from None
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {Path(checkpoint_dir) / tag}")
    rank = world()[0]
    rng_file = Path(checkpoint_dir) / tag / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(safe_torch_load(rng_file, "RNG state", numpy_arrays=True))
    else:
        warnings.warn(f"{rng_file} is missing (world size changed?): random streams restart from the seed", stacklevel=2)
    return client_state


class SafeCheckpointEngine:
    """DeepSpeed's checkpoint engine with a ``load`` that never unpickles code.

    DeepSpeed reads every file of a checkpoint (module, ZeRO optimiser shards, client state) through
    ``engine.checkpoint_engine.load``, a full unpickling ``torch.load`` that imports any global a file names;
    this wrapper replaces that one call by :func:`fba.utils.safe_load.safe_torch_load` and passes everything else
    (saving, commits) through.
    """

    def __init__(self, inner):
        self.inner = inner.inner if isinstance(inner, SafeCheckpointEngine) else inner

    def load(self, path: str, map_location=None):
        return safe_torch_load(path, "DeepSpeed checkpoint file", map_location=map_location or "cpu", deepspeed=True)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)
