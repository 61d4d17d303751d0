"""``fba embed`` under torchrun: the image list split by rank, one shard file per rank, merged by rank 0.

    torchrun --nproc_per_node 8 -m fba.cli embed --model model.pt --images crops/ --out feats.safetensors
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv-endpoint HOST:29500 -m fba.cli embed ...   # across nodes

Rank r embeds the r-th contiguous slice of the list and writes ``<out>.shards/shard-<r>-of-<W><suffix>``
atomically (``fba.retrieval.features_file``). After a barrier rank 0 reads the shards in rank order, so the merged file has
the rows in the input order, writes ``<out>`` and removes the shard folder. A shard records what it was made
from (its paths, the model file, the backend and the feature); a rerun of the same command keeps every shard
whose record matches and redoes the others, so a killed run loses only the shards that had not finished.
Across nodes ``--out`` must be on a file system that every node sees. The process group (gloo) carries only
barriers; the features go through the files.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from fba.distributed import launch_rank as rank
from fba.distributed import launch_world_size as world_size
from fba.retrieval.features_file import FeaturesFileError, load_features, save_features

BARRIER_TIMEOUT = timedelta(hours=24)  # rank 0 waits at the barrier while the slowest rank embeds its slice


def file_identity(path: Path) -> list:
    """What changes when the model file changes, cheaply: resolved path, size, modification time."""
    from fba.deploy.export import resolve_model_file

    target = resolve_model_file(path) if Path(path).is_dir() else Path(path)
    stat = target.stat()
    return [str(target.resolve()), stat.st_size, stat.st_mtime_ns]


def shard_rows(num: int, rank: int, world: int) -> range:
    return range(rank * num // world, (rank + 1) * num // world)


def shard_dir(out: Path) -> Path:
    return out.with_name(out.name + ".shards")


def shard_path(out: Path, rank: int, world: int) -> Path:
    return shard_dir(out) / f"shard-{rank:05d}-of-{world:05d}{out.suffix}"


def job_digest(keys: list[str], job: dict) -> str:
    return hashlib.sha256(json.dumps({"keys": keys, "job": job}, sort_keys=True).encode()).hexdigest()


def finished_shard(path: Path, keys: list[str], digest: str) -> torch.Tensor | None:
    """The features of a shard written earlier for the same job, or None (absent, unreadable, other job)."""
    if not path.is_file():
        return None
    try:
        fs = load_features(path)
    except (FeaturesFileError, OSError):
        return None
    if fs.meta.get("job") != digest or fs.paths != keys:
        return None
    return torch.from_numpy(fs.features)


def shard_job(meta: dict, model: Path) -> dict:
    """What a shard is made from, besides its paths: the features file's ``meta`` and the model file's identity."""
    return dict(meta, model_file=file_identity(model))


def write_shard(
    out: Path, keys: list[str], job: dict, compute: Callable[[range], torch.Tensor], rank: int, world: int
) -> Path | None:
    """Rank ``rank``'s shard of ``keys``, computed unless a finished one of the same job is there (None: no rows)."""
    rows = shard_rows(len(keys), rank, world)
    if not rows:
        return None
    mine = [keys[i] for i in rows]
    path = shard_path(out, rank, world)
    digest = job_digest(mine, dict(job, rank=rank, world=world))
    if finished_shard(path, mine, digest) is not None:
        print(f"fba embed: rank {rank} keeps its shard {path} (finished earlier)", flush=True)
        return path
    save_features(path, compute(rows), mine, meta={"job": digest, "rank": rank, "world": world})
    return path


def merge_shards(out: Path, keys: list[str], job: dict, world: int) -> torch.Tensor:
    """Every rank's shard, in rank order: the features of ``keys`` in order."""
    parts = []
    for rank in range(world):
        rows = shard_rows(len(keys), rank, world)
        if not rows:
            continue
        theirs = [keys[i] for i in rows]
        features = finished_shard(shard_path(out, rank, world), theirs, job_digest(theirs, dict(job, rank=rank, world=world)))
        if features is None:
            raise RuntimeError(f"shard {shard_path(out, rank, world)} is missing or from another job")
        parts.append(features)
    return torch.cat(parts)


def embed_sharded(
    out: Path, keys: list[str], job: dict, compute: Callable[[range], torch.Tensor],
    write: Callable[[torch.Tensor], None],
) -> None:
    """This rank's slice through ``compute`` (unless its shard is already done); rank 0 merges and ``write``s."""
    out = Path(out)
    me, world = rank(), world_size()
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        write_shard(out, keys, job, compute, me, world)
        dist.barrier()
        if me == 0:
            write(merge_shards(out, keys, job, world))
            shutil.rmtree(shard_dir(out), ignore_errors=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()
