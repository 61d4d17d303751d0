"""Image->text cross-attention of both caption branches with the column statistics of differential pooling.

``reference`` is the plain PyTorch twin every fused version is checked against: it materialises the attention
probabilities, which the fused kernels never write to memory. ``cross_attention_op.fused`` is the differentiable
fused op ``torch.ops.fba.cross_attention_with_stats``: forward in Triton
(``cross_attention_triton``) or CUDA C++ (``cross_attention_cuda``), backward in Triton from the saved row
log-sum-exp, the stats' gradient included; ``reference_forward`` and ``reference_backward`` are the same op's
PyTorch kernels (CPU tensors, and inputs the fused kernels cannot take).
"""
from __future__ import annotations

import torch


def _scores(q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """q kᵀ/√d in fp32 with -inf at padded keys: [B,H,Nq,M]."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    return scores.masked_fill(~valid[:, None, None, :], float("-inf"))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor):
    probs = _scores(q, k, valid).softmax(dim=-1)
    return torch.matmul(probs.to(v.dtype), v), probs


def _stats(w_f: torch.Tensor, w_b: torch.Tensor, row_start: int) -> torch.Tensor:
    rf, rb = w_f[:, row_start:], w_b[:, row_start:]
    return torch.stack([(rf * rb).sum(1), (rf * rf).sum(1), (rb * rb).sum(1)], dim=1)


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
    stats = _stats(w_f, w_b, row_start)
    if return_maps:
        return o_f, o_b, stats, (w_f, w_b)
    return o_f, o_b, stats


FUSED_BACKENDS = ("triton", "cuda")
OP_BACKENDS = ("reference", *FUSED_BACKENDS)  # what the custom op runs inside
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


def check_inputs(q, k_f, v_f, k_b, v_b, valid_f, valid_b, fused_kernel: bool = True) -> None:
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
    reason = unsupported_reason(q, k_f) if fused_kernel else None
    if reason:
        raise ValueError(f"cross_attention_with_stats: the fused kernels cannot take {reason}")


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def shared_layout(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Key/value tensors with one stride layout (what the kernels index with), copying only when they differ."""
    ts = tuple(_unit_last(t) for t in ts)
    if len({t.stride() for t in ts}) == 1:
        return ts
    return tuple(t.contiguous() for t in ts)


def reference_forward(q, k_f, v_f, k_b, v_b, valid_f, valid_b, row_start: int):
    """The fused forward's outputs in PyTorch: o_f, o_b, stats and the row log-sum-exp lse [2,B,H,Nq] fp32."""
    outs, lses, maps = [], [], []
    for k, v, valid in ((k_f, v_f, valid_f), (k_b, v_b, valid_b)):
        scores = _scores(q, k, valid)
        lse = scores.logsumexp(dim=-1)
        probs = scores.softmax(dim=-1)  # as ``reference`` computes them: the pooling mask amplifies any difference
        outs.append(torch.matmul(probs.to(v.dtype), v).contiguous())
        lses.append(lse)
        maps.append(probs.mean(dim=1))
    return outs[0], outs[1], _stats(*maps, row_start).contiguous(), torch.stack(lses)


def stats_map_grads(w_f: torch.Tensor, w_b: torch.Tensor, dstats: torch.Tensor, row_start: int):
    """Gradients of the head-averaged maps (dW_f, dW_b) [B,Nq,M] from the stats' gradient dstats [B,3,M]:
    d(sum_i Wf·Wb)/dWf = Wb, d(sum_i Wf²)/dWf = 2 Wf, over the rows ``i >= row_start``."""
    g = dstats.float()[:, :, None, :]
    keep = (torch.arange(w_f.shape[1], device=w_f.device) >= row_start)[None, :, None]
    dw_f = torch.where(keep, g[:, 0] * w_b + 2 * g[:, 1] * w_f, 0.0)
    dw_b = torch.where(keep, g[:, 0] * w_f + 2 * g[:, 2] * w_b, 0.0)
    return dw_f, dw_b


def reference_backward(q, k_f, v_f, k_b, v_b, valid_f, valid_b, lse, do_f, do_b, dstats, row_start: int):
    """(dq, dk_f, dv_f, dk_b, dv_b) in PyTorch (fp32 math), the flash-attention formulas the Triton backward uses:
    P = exp(S - lse), dP = dO vᵀ + dW/H (dW from the stats, when ``dstats`` is given), dS = P (dP - rowsum(P dP))."""
    heads, scale = q.shape[1], q.shape[-1] ** -0.5
    branches = ((k_f, valid_f), (k_b, valid_b))
    probs = [torch.exp(_scores(q, k, valid) - lse_branch[..., None]) for (k, valid), lse_branch in zip(branches, lse)]
    extra = [0.0, 0.0]
    if dstats is not None:
        extra = [dw[:, None] / heads for dw in stats_map_grads(probs[0].mean(1), probs[1].mean(1), dstats, row_start)]
    qf = q.float()
    dq = torch.zeros_like(qf)
    grads = []
    for p, k, v, do, dw in zip(probs, (k_f, k_b), (v_f, v_b), (do_f, do_b), extra):
        do = do.float()
        dp = torch.matmul(do, v.float().transpose(-1, -2)) + dw
        ds = p * (dp - (p * dp).sum(dim=-1, keepdim=True))
        dq += torch.matmul(ds, k.float()) * scale
        grads += [(torch.matmul(ds.transpose(-1, -2), qf) * scale).to(k.dtype).contiguous(),
                  torch.matmul(p.transpose(-1, -2), do).to(v.dtype).contiguous()]
    return (dq.to(q.dtype), *grads)
