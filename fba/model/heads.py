"""BNNeck heads (as CLIP-ReID / TransReID): BatchNorm1d with a frozen bias, then a bias-free classifier.

The triplet loss sees the feature before the BatchNorm, the ID loss the classifier's logits after it, and
retrieval uses the feature after it.

Several ranks: each rank's BatchNorm normalises with the statistics of its own micro-batch by default, as the
field's DDP trainers do; ``model.sync_bn`` swaps in :class:`SyncBatchNorm1d`, whose training statistics are those
of all ranks' micro-batches together, so the heads see what one GPU with the whole batch sees
(docs/distributed.md).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["BNNeckHead", "SyncBatchNorm1d", "sync_batchnorm"]


class BNNeckHead(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feature [B, D] -> (post-BN feature [B, D], logits [B, num_classes])."""
        normed = self.bn(feature)
        return normed, self.classifier(normed)


class SyncBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over [B, C] whose training statistics pool every rank's batch (any backend, gloo included:
    torch's ``SyncBatchNorm`` refuses CPU tensors). Two differentiable all-reduces, mean then variance (two
    passes, as BatchNorm's own), in fp32; one rank or eval mode is plain BatchNorm1d. Same state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist
        from torch.distributed.nn.functional import all_reduce

        if not self.training or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return super().forward(x)
        x32 = x.float()
        count = x.new_full((1,), x.shape[0], dtype=torch.float32)
        total = all_reduce(torch.cat([x32.sum(0), count]))
        n = total[-1].detach()
        mean = total[:-1] / n
        centred = x32 - mean
        var = all_reduce(centred.pow(2).sum(0)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.float()
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        out = centred * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight.float() + self.bias.float()
        return out.to(x.dtype)


def sync_batchnorm(model: nn.Module) -> int:
    """Swap every BNNeck's BatchNorm1d for a :class:`SyncBatchNorm1d` with the same weights, buffers and frozen
    bias; returns how many were swapped. Call before the optimiser is built."""
    swapped = 0
    for head in model.modules():
        if isinstance(head, BNNeckHead) and type(head.bn) is nn.BatchNorm1d:
            old = head.bn
            new = SyncBatchNorm1d(old.num_features, old.eps, old.momentum, old.affine, old.track_running_stats)
            new.load_state_dict(old.state_dict())
            new.to(device=old.weight.device, dtype=old.weight.dtype)
            for name, param in old.named_parameters():
                getattr(new, name).requires_grad_(param.requires_grad)
            head.bn = new
            swapped += 1
    return swapped
