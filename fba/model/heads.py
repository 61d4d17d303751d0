"""BNNeck heads (as CLIP-ReID / TransReID): BatchNorm1d with a frozen bias, then a bias-free classifier.

The triplet loss sees the feature before the BatchNorm, the ID loss the classifier's logits after it, and
retrieval uses the feature after it.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["BNNeckHead"]


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
