"""Rank, world size, device and collectives: the one low-level module every layer asks (docs/distributed.md).

- :func:`launch_rank`, :func:`launch_world_size`, :func:`is_main_rank`, :func:`rank_device`: what the launcher
  (torchrun, ``deepspeed``) says this process is, read before (or without) a process group;
  :func:`usable_device`: a ``--device`` checked against this machine;
- :func:`world`: rank and world size of the initialised process group;
- :func:`micro_batch_size`: ``data.batch_size`` (P x K) is the global batch of one optimiser step; a rank's
  micro-batch holds P / (W x A) identities x K images.
- :func:`gather_with_local_grad`: the features of every rank, concatenated in rank order, for losses that
  mine across the batch (batch-hard triplet). Only the local slice carries a gradient, scaled by W so that the
  engine's gradient *average* over ranks gives the gradient of the one global loss.
- :func:`elastic_restart`: whether this process is a restart by an elastic launcher (``torchrun --max-restarts``).
- :func:`init_process_group`: the default process group, under a store prefix of its own per elastic attempt.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from fba.config import ConfigError
from fba.errors import UsageError

__all__ = ["elastic_restart", "gather_with_local_grad", "gather_no_grad", "init_process_group", "is_main_rank",
           "launch_rank", "launch_world_size", "micro_batch_size", "rank_device", "usable_device", "world"]


def launch_rank() -> int:
    """This process's global rank as the launcher set it (``RANK``; 0 when not launched by one)."""
    return int(os.environ.get("RANK", "0"))


def launch_world_size() -> int:
    """The number of processes the launcher started (``WORLD_SIZE``; 1 when not launched by one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_rank() -> bool:
    return launch_rank() == 0


def rank_device(device: str | None, option: str = "--device") -> torch.device:
    """``device`` as given (checked: it must exist on this machine), else cuda:LOCAL_RANK when CUDA is there (one
    GPU per rank), else the CPU."""
    if device:
        return usable_device(device, option)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def usable_device(device: str, option: str = "--device") -> torch.device:
    """``device`` parsed and checked against this machine, so a missing GPU is one line before any work, not a
    driver traceback after it."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UsageError(f"{option} {device!r}: not a device (cpu, cuda, cuda:1, ...)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {device}: this machine has no usable CUDA device; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA devices")
    elif parsed.type != "cpu":
        raise UsageError(f"{option} {device}: only cpu and cuda devices are supported")
    return parsed


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def micro_batch_size(batch_size: int, num_instances: int, world_size: int, accum_steps: int) -> int:
    """Images in one rank's micro-batch when ``batch_size`` (P x K) is the global batch of an optimiser step.

    Every rank draws whole identities (the triplet loss needs K images of each identity it sees), so P must
    split evenly into ``world_size x accum_steps`` parts; anything else is refused with the numbers.
    """
    if num_instances < 1 or batch_size < num_instances or batch_size % num_instances:
        raise ConfigError(
            f"data.batch_size ({batch_size}) must be a positive multiple of data.num_instances ({num_instances})"
        )
    identities = batch_size // num_instances
    parts = world_size * accum_steps
    if identities % parts:
        raise ConfigError(
            f"data.batch_size={batch_size} is {identities} identities x {num_instances} images, which does not split "
            f"into world size {world_size} x solver.grad_accum_steps {accum_steps} = {parts} equal parts of whole "
            f"identities; use a data.batch_size whose identity count ({identities}) is a multiple of {parts}"
        )
    return identities // parts * num_instances


class _GatherWithLocalGrad(torch.autograd.Function):
    """all_gather in the forward; the backward hands back the local slice's gradient times the world size.

    Every rank computes the same loss of the gathered features, so the sum over ranks of the local slices'
    gradients (what ``torch.distributed.nn.all_gather``'s backward collects with a second collective) equals
    W times the local one: no collective is needed in the backward.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        ctx.rank, ctx.size, ctx.rows = rank, size, local.shape[0]
        parts = [torch.empty_like(local) for _ in range(size)]
        dist.all_gather(parts, local.contiguous())
        parts[rank] = local
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        start = ctx.rank * ctx.rows
        return grad[start:start + ctx.rows] * ctx.size


def gather_with_local_grad(local: torch.Tensor) -> torch.Tensor:
    """[B_local, ...] -> [W x B_local, ...] in rank order; the identity on one rank (same batch size on all)."""
    if world()[1] == 1:
        return local
    return _GatherWithLocalGrad.apply(local)


def gather_no_grad(local: torch.Tensor) -> torch.Tensor:
    """[B_local, ...] -> [W x B_local, ...] in rank order, for labels."""
    size = world()[1]
    if size == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(parts, local.contiguous())
    return torch.cat(parts)


def elastic_restart() -> bool:
    """True in a worker that an elastic launcher restarted after a failure (torchrun sets the count >= 1)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def init_process_group(backend: str, alone: bool = False) -> None:
    """``env://`` rendezvous, then the default process group on a store prefixed by the elastic attempt; a
    process no launcher started (``alone``) needs no rendezvous and takes an in-memory store, so it binds no port
    (a port picked free and bound a moment later can be taken in between: EADDRINUSE).

    torchrun's workers share the agent's store across restarts; a restarted group that keys its gloo connections
    in it as the first attempt did can read an address of the dead attempt and fail with "connectFullMesh ...
    Connection refused" (seen in about half of the restarts of tests/train/test_world_size.py). A prefix per
    ``TORCHELASTIC_RESTART_COUNT`` keeps every attempt's keys apart.
    """
    if alone:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        return
    store, rank, size = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(backend, store=dist.PrefixStore(f"fba/attempt_{attempt}", store), rank=rank,
                            world_size=size)
