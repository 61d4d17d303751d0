"""The collectives behind world-size invariance, at world size 2 on gloo (two spawned processes, seconds):
the gathered batch-hard triplet and SyncBatchNorm1d give one GPU's loss, gradients and running statistics."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fba.config import ConfigError
from fba.distributed import elastic_restart, gather_with_local_grad, micro_batch_size
from fba.losses import triplet_loss
from fba.model.heads import BNNeckHead, SyncBatchNorm1d, sync_batchnorm


def test_micro_batch_arithmetic():
    assert micro_batch_size(64, 4, 4, 1) == 16 and micro_batch_size(64, 4, 2, 2) == 16
    assert micro_batch_size(64, 4, 1, 1) == 64 and micro_batch_size(64, 4, 16, 1) == 4
    with pytest.raises(ConfigError, match=r"data.batch_size=64 is 16 identities x 4 images.*world size 3 x "
                                          r"solver.grad_accum_steps 1 = 3"):
        micro_batch_size(64, 4, 3, 1)
    with pytest.raises(ConfigError, match="positive multiple of data.num_instances"):
        micro_batch_size(30, 4, 1, 1)


def test_elastic_restart_reads_the_launchers_restart_count(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert not elastic_restart()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert not elastic_restart()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert elastic_restart()


def _reference(features: torch.Tensor, pids: torch.Tensor, bn_input: torch.Tensor):
    """One process with the whole batch: triplet value and feature gradient, BatchNorm output, input gradient
    and running statistics."""
    x = features.clone().requires_grad_(True)
    loss = triplet_loss(x, pids)
    loss.backward()
    bn = torch.nn.BatchNorm1d(bn_input.shape[1])
    y = bn_input.clone().requires_grad_(True)
    out = bn(y)
    (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out).sin()).sum().backward()
    return loss.detach(), x.grad, out.detach(), y.grad, bn.running_mean, bn.running_var, bn.weight.grad


def _worker(rank: int, world_size: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        gen = torch.Generator().manual_seed(0)
        features = torch.randn(16, 8, generator=gen)
        pids = torch.arange(4).repeat_interleave(4)
        bn_input = torch.randn(16, 6, generator=gen) * 3 + 1
        rows = slice(rank * 8, (rank + 1) * 8)

        local = features[rows].clone().requires_grad_(True)
        loss = triplet_loss(gather_with_local_grad(local), pids)  # every rank: the loss of the whole batch
        loss.backward()
        grad = local.grad / world_size  # what this rank's rows add to the engine's average over ranks

        bn = SyncBatchNorm1d(6)
        y = bn_input[rows].clone().requires_grad_(True)
        out = bn(y)
        weights = torch.arange(16 * 6, dtype=out.dtype).view(16, 6).sin()[rows]
        (out * weights).sum().backward()
        weight_grad = bn.weight.grad.clone()
        dist.all_reduce(weight_grad)  # the engine averages, while the loss is summed over ranks here: sum
        outs = [torch.empty_like(out) for _ in range(world_size)]
        dist.all_gather(outs, out.detach())
        y_grads = [torch.empty_like(y.grad) for _ in range(world_size)]
        dist.all_gather(y_grads, y.grad)
        feature_grads = [torch.empty_like(grad) for _ in range(world_size)]
        dist.all_gather(feature_grads, grad)
        if rank == 0:
            results["got"] = (loss.detach(), torch.cat(feature_grads), torch.cat(outs),
                              torch.cat(y_grads), bn.running_mean, bn.running_var, weight_grad)
            results["want"] = _reference(features, pids, bn_input)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters importing torch: ~40 s on a loaded 2-core machine
def test_gathered_triplet_and_sync_batchnorm_equal_one_process_with_the_whole_batch(tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    got, want = results["got"], results["want"]
    names = ("triplet", "feature grad", "bn output", "bn input grad", "running mean", "running var", "bn weight grad")
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_sync_batchnorm_swap_keeps_weights_and_the_frozen_bias():
    head = BNNeckHead(8, 5)
    head.bn.running_mean.fill_(0.5)
    model = torch.nn.Sequential(head)
    assert sync_batchnorm(model) == 1 and sync_batchnorm(model) == 0
    assert type(head.bn) is SyncBatchNorm1d and not head.bn.bias.requires_grad and head.bn.weight.requires_grad
    assert torch.equal(head.bn.running_mean, torch.full((8,), 0.5))
    x = torch.randn(6, 8)
    plain = torch.nn.BatchNorm1d(8)
    plain.load_state_dict(head.bn.state_dict())
    torch.testing.assert_close(head.bn(x), plain(x))  # one process: plain BatchNorm
