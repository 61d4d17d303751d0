"""The P x K identity sampler of the field, made deterministic and distributed-aware.

An epoch is built as TransReID's / fast-reid's ``RandomIdentitySampler`` builds it: every identity's images
are shuffled and cut into chunks of K (the remainder is left out); an identity with fewer than K images is
resampled with replacement up to K (one chunk). Batches are then drawn while at least P identities have
chunks left: P identities at random, one chunk each. Because that draw is random, the number of batches may
differ by a few from one epoch to the next; here the whole epoch is planned up front from ``(seed, epoch)``,
so ``len()`` is exact for the current epoch.

Several ranks, gradient accumulation: ``batch_size`` (P x K) is the *global* batch of one optimiser step, as
CLIP-ReID's and TransReID's ``IMS_PER_BATCH`` is. Every rank plans the same global list of batches, one per
optimiser step, so the epoch length and the schedule do not depend on the world size W or the accumulation A.
Each global batch is cut into W x A parts of P / (W x A) whole identities (K images each): micro-step ``a`` of
rank ``r`` takes part ``a x W + r``, so the W ranks of one micro-step together hold P / A whole identities
(docs/distributed.md).
"""
from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler

from fba.distributed import micro_batch_size, world
from fba.errors import InputError


class PKBatchError(InputError):
    """data.batch_size / data.num_instances that the training identities cannot fill with P x K batches."""


def _distributed_default(rank: int | None, world_size: int | None) -> tuple[int, int]:
    group_rank, group_size = world()
    rank = group_rank if rank is None else rank
    world_size = group_size if world_size is None else world_size
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
        accum_steps: int = 1,
    ):
        self.rank, self.world_size = _distributed_default(rank, world_size)
        if accum_steps < 1:
            raise PKBatchError(f"PKSampler: accum_steps must be >= 1, got {accum_steps}")
        self.micro_batch_size = micro_batch_size(batch_size, num_instances, self.world_size, accum_steps)
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.num_pids_per_batch = batch_size // num_instances
        self.accum_steps = accum_steps
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0
        self.index_by_pid: dict[int, list[int]] = {}
        for index, pid in enumerate(pids):
            self.index_by_pid.setdefault(int(pid), []).append(index)
        self.index_by_pid = dict(sorted(self.index_by_pid.items()))
        if len(self.index_by_pid) < self.num_pids_per_batch:
            raise PKBatchError(
                f"PKSampler: {len(self.index_by_pid)} identities, but a batch needs P = {self.num_pids_per_batch}"
            )
        self._plan: tuple[tuple[int, int], list[list[int]]] | None = None
        if not self.global_batches(0):
            raise PKBatchError(f"PKSampler: one epoch gives no P x K batch of {self.num_pids_per_batch} identities")

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
        """This rank's micro-batches of the current epoch, from global batch ``start_batch`` on."""
        size = self.micro_batch_size
        mine = []
        for batch in self.global_batches(self.epoch)[self.start_batch:]:
            for step in range(self.accum_steps):
                part = step * self.world_size + self.rank
                mine.append(batch[part * size:(part + 1) * size])
        return mine

    @property
    def num_batches(self) -> int:
        """Micro-batches this rank yields in the current epoch (from ``start_batch``)."""
        return (len(self.global_batches(self.epoch)) - self.start_batch) * self.accum_steps

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate ``epoch`` from its global batch ``start_batch`` (a resume in the middle of an epoch)."""
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch

    def __len__(self) -> int:
        return self.num_batches * self.micro_batch_size

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

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return self.sampler.num_batches

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)
