"""Image->text cross-attention of both caption branches with the column statistics of differential pooling.

``reference`` is the plain PyTorch twin every fused version is checked against: it materialises the attention
probabilities, which the fused kernels never write to memory.
"""
from __future__ import annotations

import torch


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor):
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.matmul(probs.to(v.dtype), v), probs


def reference(
    q: torch.Tensor,
    k_f: torch.Tensor,
    v_f: torch.Tensor,
    k_b: torch.Tensor,
    v_b: torch.Tensor,
    valid_f: torch.Tensor,
    valid_b: torch.Tensor,
    row_start: int = 1,
    return_maps: bool = False,
):
    """q [B,H,Nq,d]; k_*, v_* [B,H,M,d]; valid_* [B,M] bool (False = key padding).

    Returns ``o_f, o_b`` [B,H,Nq,d] in q's dtype and ``stats`` [B,3,M] fp32 = (sum_i Wf*Wb, sum_i Wf^2,
    sum_i Wb^2) over query rows ``i >= row_start``, W the head-averaged softmax; with ``return_maps`` also the
    head-averaged maps ``(w_f, w_b)`` [B,Nq,M] fp32 (all rows).
    """
    o_f, p_f = _attend(q, k_f, v_f, valid_f)
    o_b, p_b = _attend(q, k_b, v_b, valid_b)
    w_f, w_b = p_f.mean(dim=1), p_b.mean(dim=1)
    rf, rb = w_f[:, row_start:], w_b[:, row_start:]
    stats = torch.stack([(rf * rb).sum(1), (rf * rf).sum(1), (rb * rb).sum(1)], dim=1)
    if return_maps:
        return o_f, o_b, stats, (w_f, w_b)
    return o_f, o_b, stats
