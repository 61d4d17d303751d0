"""Attention-map differential pooling (docs/design.md#differential-pooling), the plain PyTorch reference.

Columns (caption positions) whose image->text attention differs most between the fg and the bg caption get
the largest weight. Everything depends on the maps only through three per-column sums over the image rows,
which is why ``pool_from_stats`` takes exactly what the fused kernel returns.
"""
from __future__ import annotations

import torch

__all__ = ["differential_pool", "pool_from_stats", "pool_mask_from_stats"]

EPS = 1e-6


def pool_mask_from_stats(dot: torch.Tensor, sq_f: torch.Tensor, sq_b: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """m [B, M] from the column sums: cosine similarity s_j of the fg/bg columns, min-max scaled to [0, 1] over
    the valid columns (valid in both captions); invalid columns get 0.

    A constant s over the valid columns gives 0 / (0 + 1e-6) = 0 everywhere, as the formula of
    docs/design.md#differential-pooling does.
    """
    def norm(sq: torch.Tensor) -> torch.Tensor:
        # A zero column (padding, or a softmax that underflowed) has dot = 0 too, so s_j = 0 with any norm;
        # a norm of 1 there keeps sqrt's gradient finite.
        return torch.where(valid & (sq > 0), sq, torch.ones_like(sq)).sqrt()

    sim = dot / (norm(sq_f) * norm(sq_b) + EPS)
    lowest = sim.masked_fill(~valid, float("inf")).amin(dim=-1, keepdim=True)
    highest = sim.masked_fill(~valid, float("-inf")).amax(dim=-1, keepdim=True)
    mask = (sim - lowest) / (highest - lowest + EPS)
    return torch.where(valid, mask, torch.zeros_like(mask))


def _pool(mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    weights = mask.to(tokens.dtype)
    pooled = torch.einsum("bm,bmd->bd", weights, tokens)
    return pooled / (weights.sum(dim=-1, keepdim=True) + EPS)


def pool_from_stats(
    dot: torch.Tensor,
    sq_f: torch.Tensor,
    sq_b: torch.Tensor,
    tokens: torch.Tensor,
    valid: torch.Tensor,
    pool_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_j m_j x_j / (sum_j m_j + 1e-6) [B, D], m [B, M]) from the column sums dot, sq_f, sq_b [B, M].

    ``tokens`` [B, M, D] are the fg text stream's outputs; ``valid`` [B, M] bool. With ``pool_grad`` False
    the mask is a constant (no gradient reaches the attention maps); the pooled feature always passes
    gradient to ``tokens``.
    """
    if pool_grad:
        mask = pool_mask_from_stats(dot.float(), sq_f.float(), sq_b.float(), valid)
    else:
        with torch.no_grad():
            mask = pool_mask_from_stats(dot.float(), sq_f.float(), sq_b.float(), valid)
    return _pool(mask, tokens), mask


def differential_pool(
    w_f: torch.Tensor,
    w_b: torch.Tensor,
    tokens: torch.Tensor,
    valid: torch.Tensor,
    pool_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same from the head-averaged maps w_f, w_b [B, N, M] (image patch rows; the caller drops CLS)."""
    w_f, w_b = w_f.float(), w_b.float()
    return pool_from_stats((w_f * w_b).sum(1), (w_f * w_f).sum(1), (w_b * w_b).sum(1), tokens, valid, pool_grad)
