"""Image->text cross-attention of both caption branches with the column statistics of differential pooling.

``reference`` is the plain PyTorch twin every fused version is checked against: it materialises the attention
probabilities, which the fused kernels never write to memory. ``fused`` is the differentiable fused op: forward
in Triton (``cross_attention_triton``) or CUDA C++ (``cross_attention_cuda``), backward in Triton from the saved
row log-sum-exp.
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


FUSED_BACKENDS = ("triton", "cuda")
MAX_KEYS = 128
MAX_HEAD_DIM = 128
FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def unsupported_reason(q: torch.Tensor, k: torch.Tensor) -> str | None:
    """Why the fused kernels cannot take these inputs (None when they can)."""
    if q.dtype not in FUSED_DTYPES:
        return f"dtype {q.dtype} (fused kernels take float16, bfloat16, float32)"
    if k.shape[2] > MAX_KEYS:
        return f"{k.shape[2]} keys (fused kernels hold one softmax row in one tile: at most {MAX_KEYS})"
    if q.shape[3] > MAX_HEAD_DIM:
        return f"head dim {q.shape[3]} (fused kernels take at most {MAX_HEAD_DIM})"
    return None


def _check(q, k_f, v_f, k_b, v_b, valid_f, valid_b) -> None:
    if q.dim() != 4:
        raise ValueError(f"cross_attention_with_stats: q must be [B,H,Nq,d], got shape {tuple(q.shape)}")
    batch, heads, _, dim = q.shape
    m = k_f.shape[2] if k_f.dim() == 4 else -1
    for name, t in (("k_f", k_f), ("v_f", v_f), ("k_b", k_b), ("v_b", v_b)):
        if tuple(t.shape) != (batch, heads, m, dim):
            raise ValueError(f"cross_attention_with_stats: {name} must be [B,H,M,d]=[{batch},{heads},M,{dim}] "
                             f"like k_f, got {tuple(t.shape)}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"cross_attention_with_stats: {name} is {t.dtype} on {t.device}, q is {q.dtype} on "
                             f"{q.device}")
    for name, t in (("valid_f", valid_f), ("valid_b", valid_b)):
        if t.dtype != torch.bool or tuple(t.shape) != (batch, m) or t.device != q.device:
            raise ValueError(f"cross_attention_with_stats: {name} must be a bool [B,M]=[{batch},{m}] tensor on "
                             f"{q.device}, got {t.dtype} {tuple(t.shape)} on {t.device}")
    reason = unsupported_reason(q, k_f)
    if reason:
        raise ValueError(f"cross_attention_with_stats: the fused kernels cannot take {reason}")


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _shared_layout(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Key/value tensors with one stride layout (what the kernels index with), copying only when they differ."""
    ts = tuple(_unit_last(t) for t in ts)
    if len({t.stride() for t in ts}) == 1:
        return ts
    return tuple(t.contiguous() for t in ts)


def _forward_impl(backend: str):
    if backend == "triton":
        from . import cross_attention_triton

        return cross_attention_triton.forward
    if backend == "cuda":
        from . import cross_attention_cuda

        return cross_attention_cuda.forward
    raise ValueError(f"unknown fused backend {backend!r}; known: {', '.join(FUSED_BACKENDS)}")


class CrossAttentionWithStats(torch.autograd.Function):
    """Fused forward (Triton or CUDA) and the Triton backward; the stats carry no gradient."""

    @staticmethod
    def forward(ctx, q, k_f, v_f, k_b, v_b, valid_f, valid_b, row_start, backend):
        o_f, o_b, stats, lse = _forward_impl(backend)(q, k_f, v_f, k_b, v_b, valid_f, valid_b, row_start)
        ctx.save_for_backward(q, k_f, v_f, k_b, v_b, valid_f, valid_b, o_f, o_b, lse)
        ctx.mark_non_differentiable(stats)
        return o_f, o_b, stats

    @staticmethod
    def backward(ctx, do_f, do_b, _dstats):
        from . import cross_attention_triton

        q, k_f, v_f, k_b, v_b, valid_f, valid_b, o_f, o_b, lse = ctx.saved_tensors
        grads = cross_attention_triton.backward(
            q, k_f, v_f, k_b, v_b, valid_f, valid_b, o_f, o_b, lse, _unit_last(do_f), _unit_last(do_b)
        )
        return (*grads, None, None, None, None)


def fused(
    q: torch.Tensor,
    k_f: torch.Tensor,
    v_f: torch.Tensor,
    k_b: torch.Tensor,
    v_b: torch.Tensor,
    valid_f: torch.Tensor,
    valid_b: torch.Tensor,
    row_start: int = 1,
    backend: str = "triton",
):
    """``reference``'s outputs without materialising the maps; differentiable in q, k_*, v_* (not the stats)."""
    _check(q, k_f, v_f, k_b, v_b, valid_f, valid_b)
    q = _unit_last(q)
    k_f, v_f, k_b, v_b = _shared_layout(k_f, v_f, k_b, v_b)
    return CrossAttentionWithStats.apply(
        q, k_f, v_f, k_b, v_b, valid_f.contiguous(), valid_b.contiguous(), int(row_start), backend
    )
