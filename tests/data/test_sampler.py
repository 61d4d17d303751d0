from __future__ import annotations

import random
from collections import Counter

import pytest
import torch.distributed as dist

from fba.config import ConfigError
from fba.data import PKSampler


def random_pids(seed: int = 0, num_ids: int = 23) -> list[int]:
    """Ids with 1..9 images each (some below K), in shuffled order, with gaps in the id values."""
    rng = random.Random(seed)
    pids = [pid * 3 + 1 for pid in range(num_ids) for _ in range(rng.randint(1, 9))]
    rng.shuffle(pids)
    return pids


def batches_of(sampler: PKSampler) -> list[list[int]]:
    flat = list(sampler)
    size = sampler.micro_batch_size
    assert len(flat) == len(sampler) and len(flat) % size == 0
    return [flat[i:i + size] for i in range(0, len(flat), size)]


@pytest.mark.parametrize("batch_size, k", [(16, 4), (12, 3), (10, 5), (7, 1)])
def test_every_batch_is_p_ids_times_k(batch_size: int, k: int):
    pids = random_pids()
    sampler = PKSampler(pids, batch_size=batch_size, num_instances=k, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = batches_of(sampler)
        assert len(batches) == sampler.num_batches > 0
        for batch in batches:
            counts = Counter(pids[i] for i in batch)
            assert len(counts) == batch_size // k and set(counts.values()) == {k}


def test_epoch_follows_the_field_chunking():
    """Within an epoch an id with >= K images never repeats an image and gives at most n // K chunks;
    an id with fewer than K images is resampled with replacement to exactly one chunk of K."""
    pids = random_pids(seed=1)
    sampler = PKSampler(pids, batch_size=8, num_instances=4, seed=0)
    images_of = Counter(pids)
    uses = Counter(i for batch in batches_of(sampler) for i in batch)
    chunks_of = Counter()
    for index, count in uses.items():
        chunks_of[pids[index]] += count
    for pid, total in chunks_of.items():
        n = images_of[pid]
        if n >= 4:
            assert all(uses[i] == 1 for i, p in enumerate(pids) if p == pid and i in uses)
            assert total % 4 == 0 and total <= (n // 4) * 4
        else:
            assert total == 4
    # batches stop only when fewer than P = 2 ids have chunks left
    ids_with_chunks_left = [pid for pid, n in images_of.items() if chunks_of[pid] // 4 < max(n // 4, 1)]
    assert len(ids_with_chunks_left) < 2


def test_small_ids_are_resampled_to_k():
    pids = [0] * 5 + [1] * 1 + [2] * 2
    sampler = PKSampler(pids, batch_size=12, num_instances=4, seed=0)
    (batch,) = batches_of(sampler)
    assert Counter(pids[i] for i in batch) == {0: 4, 1: 4, 2: 4}
    assert [i for i in batch if pids[i] == 1] == [5, 5, 5, 5]


def test_deterministic_by_seed_and_epoch():
    pids = random_pids()
    a, b = PKSampler(pids, 16, 4, seed=7), PKSampler(pids, 16, 4, seed=7)
    assert list(a) == list(b)
    assert list(a) != list(PKSampler(pids, 16, 4, seed=8))
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first


@pytest.mark.parametrize("world_size, accum", [(1, 2), (2, 1), (3, 1), (2, 3)])
def test_the_global_batch_is_cut_into_whole_identities_for_every_rank_and_micro_step(world_size: int, accum: int):
    """``batch_size`` is the global batch of an optimiser step at any world size W and accumulation A: the
    W x A parts of step s (micro-step a of rank r is part a x W + r) put back together are global batch s."""
    pids = random_pids(num_ids=40)
    samplers = [PKSampler(pids, 24, 4, seed=1, rank=r, world_size=world_size, accum_steps=accum)
                for r in range(world_size)]
    single = PKSampler(pids, 24, 4, seed=1)
    for epoch in (0, 5):
        single.set_epoch(epoch)
        for s in samplers:
            s.set_epoch(epoch)
        per_rank = [batches_of(s) for s in samplers]
        global_batches = single.global_batches(epoch)
        assert all(len(b) == len(global_batches) * accum for b in per_rank)  # the same number of optimiser steps
        assert samplers[0].micro_batch_size == 24 // (world_size * accum)
        for step, expected in enumerate(global_batches):
            parts = [per_rank[r][step * accum + a] for a in range(accum) for r in range(world_size)]
            assert [i for part in parts for i in part] == expected == batches_of(single)[step]
            for part in parts:
                assert set(Counter(pids[i] for i in part).values()) == {4}


def test_a_resume_in_the_middle_of_an_epoch_starts_at_its_global_batch():
    pids = random_pids(num_ids=40)
    sampler = PKSampler(pids, 16, 4, seed=2, rank=1, world_size=2, accum_steps=2)
    sampler.set_epoch(4)
    whole = batches_of(sampler)
    sampler.set_epoch(4, start_batch=3)
    assert batches_of(sampler) == whole[3 * 2:] and sampler.num_batches == len(whole) - 6


def test_a_global_batch_that_does_not_split_is_a_config_error_naming_the_numbers():
    with pytest.raises(ConfigError, match=r"data.batch_size=8 is 2 identities x 4 images.*world size 3 x "
                                          r"solver.grad_accum_steps 1 = 3"):
        PKSampler(random_pids(), 8, 4, rank=0, world_size=3)
    with pytest.raises(ConfigError, match="world size 2 x solver.grad_accum_steps 2 = 4"):
        PKSampler(random_pids(), 24, 4, rank=0, world_size=2, accum_steps=2)


def test_rank_defaults_from_torch_distributed(monkeypatch):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    sampler = PKSampler(random_pids(), 8, 4)
    assert (sampler.rank, sampler.world_size) == (1, 2)
    assert list(sampler) == list(PKSampler(random_pids(), 8, 4, rank=1, world_size=2))


def test_state_dict_replays_the_same_order():
    pids = random_pids()
    sampler = PKSampler(pids, 16, 4, seed=5)
    sampler.set_epoch(3)
    expected = list(sampler)
    resumed = PKSampler(pids, 16, 4, seed=0)
    resumed.load_state_dict(sampler.state_dict())
    assert (resumed.epoch, resumed.seed) == (3, 5) and list(resumed) == expected
    with pytest.raises(ValueError, match="batch_size"):
        PKSampler(pids, 8, 4).load_state_dict(sampler.state_dict())


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of data.num_instances"):
        PKSampler([0, 1, 2], batch_size=10, num_instances=4)
    with pytest.raises(ValueError, match="3 identities, but a batch needs P = 4"):
        PKSampler([0, 1, 2], batch_size=16, num_instances=4)
    with pytest.raises(ValueError, match="rank"):
        PKSampler([0, 1, 2, 3], batch_size=8, num_instances=4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="2 identities, but a batch needs P = 4"):
        PKSampler([0, 1], batch_size=16, num_instances=4, rank=0, world_size=2)
