"""The P x K identity sampler of the field, made deterministic and distributed-aware.

An epoch is built as TransReID's / fast-reid's ``RandomIdentitySampler`` builds it: every identity's images
are shuffled and cut into chunks of K (the remainder is left out); an identity with fewer than K images is
resampled with replacement up to K (one chunk). Batches are then drawn while at least P identities have
chunks left: P identities at random, one chunk each. Because that draw is random, the number of batches may
differ by a few from one epoch to the next; here the whole epoch is planned up front from ``(seed, epoch)``,
so ``len()`` is exact for the current epoch.

Several ranks: every rank plans the same global list of batches, and rank ``r`` takes the global batches
``r, r + W, r + 2W, ...``, cut to ``G // W`` so that all ranks have the same length. Each rank batch is thus a
whole P x K group (the batch-hard triplet loss needs K images of every identity it sees), ``batch_size`` is
the batch of *one* rank, and the ranks see disjoint images of an epoch except where an identity was resampled.
"""
from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch.distributed as dist
from torch.utils.data import Sampler

from fba.errors import InputError


class PKBatchError(InputError):
    """data.batch_size / data.num_instances that the training identities cannot fill with P x K batches."""


def _distributed_default(rank: int | None, world_size: int | None) -> tuple[int, int]:
    initialised = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"PKSampler: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


class PKSampler(Sampler[int]):
    """Yields dataset indices, ``batch_size = P * K`` at a time: P identities with K images each."""

    def __init__(
        self,
        pids: Sequence[int],
        batch_size: int = 64,
        num_instances: int = 4,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        if num_instances < 1 or batch_size < num_instances or batch_size % num_instances:
            raise PKBatchError(
                f"PKSampler: batch_size ({batch_size}) must be a positive multiple of num_instances ({num_instances})"
            )
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.num_pids_per_batch = batch_size // num_instances
        self.seed = seed
        self.rank, self.world_size = _distributed_default(rank, world_size)
        self.epoch = 0
        self.index_by_pid: dict[int, list[int]] = {}
        for index, pid in enumerate(pids):
            self.index_by_pid.setdefault(int(pid), []).append(index)
        self.index_by_pid = dict(sorted(self.index_by_pid.items()))
        if len(self.index_by_pid) < self.num_pids_per_batch:
            raise PKBatchError(
                f"PKSampler: {len(self.index_by_pid)} identities, but a batch needs P = {self.num_pids_per_batch}"
            )
        self._plan: tuple[tuple[int, int], list[list[int]]] | None = None
        if not self.batches():
            raise PKBatchError(
                f"PKSampler: one epoch gives fewer P x K batches than the {self.world_size} ranks need one each"
            )

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch`` for all ranks together: the same list on every rank."""
        key = (self.seed, epoch)
        if self._plan is not None and self._plan[0] == key:
            return self._plan[1]
        rng = random.Random(f"PKSampler:{self.seed}:{epoch}")
        k, p = self.num_instances, self.num_pids_per_batch
        chunks: dict[int, list[list[int]]] = {}
        for pid, indices in self.index_by_pid.items():
            indices = rng.choices(indices, k=k) if len(indices) < k else indices.copy()
            rng.shuffle(indices)
            chunks[pid] = [indices[i:i + k] for i in range(0, len(indices) - k + 1, k)]
        available = list(chunks)
        batches: list[list[int]] = []
        while len(available) >= p:
            batch: list[int] = []
            for pid in rng.sample(available, p):
                batch += chunks[pid].pop()
                if not chunks[pid]:
                    available.remove(pid)
            batches.append(batch)
        self._plan = (key, batches)
        return batches

    def batches(self) -> list[list[int]]:
        """This rank's batches of the current epoch."""
        batches = self.global_batches(self.epoch)
        per_rank = len(batches) // self.world_size
        return batches[self.rank::self.world_size][:per_rank]

    @property
    def num_batches(self) -> int:
        return len(self.global_batches(self.epoch)) // self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "seed": self.seed, "batch_size": self.batch_size,
                "num_instances": self.num_instances}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the same epoch and seed replay the same order (batch shape must match the saved one)."""
        for key in ("batch_size", "num_instances"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"PKSampler: saved {key}={state[key]}, but this sampler has {getattr(self, key)}")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])


class SamplerEpochs:
    """The epoch half of the train-loader protocol, delegated to the loader's ``PKSampler`` (``self.sampler``):
    the torch and the DALI train loaders share it, so both resume from the same sampler state."""

    sampler: PKSampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.sampler.num_batches

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)
