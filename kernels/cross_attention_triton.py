"""Triton kernels of the image->text cross-attention with the column statistics of differential pooling.

Imported lazily by ``cross_attention`` on first use, because ``triton.jit`` decides at decoration time whether
to build for the GPU or for the CPU interpreter (``TRITON_INTERPRET=1``), and tests set that variable late.

Forward: one program per (query-row tile, image). It loops over the heads and both caption branches, so it
holds the head-sum of the fg and bg probabilities of its tile in registers; the tile's column sums go to a
partial buffer that ``torch.sum`` reduces (deterministic, and autotune may re-run the kernel freely).
A caption has at most 128 tokens, so one softmax row fits one tile: no online rescaling. The row
log-sum-exp is kept for the backward, which recomputes ``P = exp(S - lse)`` (flash attention style).

Backward: one program per (image, head) and branch; it owns the whole key block (k, v, dk, dv in registers)
and walks the query-row tiles. q is shared by the branches, so the fg launch writes its dq in fp32 and the bg
launch adds its own and writes dq in the input dtype. When the stats get a gradient (``pool_grad``), a first
kernel (one program per row tile and image, the forward's layout) recomputes the head-averaged maps of its tile
and writes their gradient dW_f, dW_b [B,Nq,M] fp32 (head-averaged: 1/H of one attention map); the backward
kernel adds dW/H to dP and rowsum(P·dW)/H to delta.

Products with ``scale`` are cast back to fp32: under ``torch.compile`` Inductor passes the Python-float scale as
fp64, which would retype the loop-carried fp32 accumulators and fail compilation.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
MIN_BLOCK_N = 16


@triton.jit
def _dot(a, b, F32: tl.constexpr):
    # F32: exact fp32 products (fp32 inputs, and the interpreter, whose bf16 dot is wrong).
    if F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _scores(q, K, bias, offs_m, offs_d, col_ok, d_ok, sk_n, scale, F32: tl.constexpr):
    """q k^T * scale + bias (fp32) of one row tile against one head's keys."""
    k = tl.load(K + offs_m[:, None] * sk_n + offs_d[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
    return (_dot(q, tl.trans(k), F32) * scale).to(tl.float32) + bias[None, :]


@triton.jit
def _row_tile(BIAS_F, BIAS_B, NQ, M, D, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The layout of the forward and stats-gradient kernels: one program per (query-row tile, image); its offsets,
    masks and both branches' key biases."""
    pid_n = tl.program_id(0)
    b = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = offs_m < M
    bias_f = tl.load(BIAS_F + b * M + offs_m, mask=col_ok, other=float("-inf"))
    bias_b = tl.load(BIAS_B + b * M + offs_m, mask=col_ok, other=float("-inf"))
    return pid_n, b, offs_n, offs_m, offs_d, offs_n < NQ, col_ok, offs_d < D, bias_f, bias_b


@triton.jit
def _head_q(Q, b, h, sq_b, sq_h, sq_n, offs_n, offs_d, row_ok, d_ok):
    return tl.load(Q + b * sq_b + h * sq_h + offs_n[:, None] * sq_n + offs_d[None, :],
                   mask=row_ok[:, None] & d_ok[None, :], other=0.0)


@triton.jit
def _pooled_map(w_sum, offs_n, row_ok, row_start, H):
    """The head average of a tile's summed maps, zero on padding rows and rows before ``row_start`` (the CLS)."""
    return tl.where((row_ok & (offs_n >= row_start))[:, None], w_sum / H, 0.0)


@triton.jit
def _attend_tile(q, K, V, O, LSE, bias, offs_n, offs_m, offs_d, row_ok, col_ok, d_ok,
                 sk_n, so_n, scale, F32: tl.constexpr):
    """Softmax(q k^T * scale + bias) v for one (row tile, head, branch); stores o and lse, returns P (fp32)."""
    s = _scores(q, K, bias, offs_m, offs_d, col_ok, d_ok, sk_n, scale, F32)
    v = tl.load(V + offs_m[:, None] * sk_n + offs_d[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
    row_max = tl.max(s, axis=1)
    p = tl.exp(s - row_max[:, None])
    row_sum = tl.sum(p, axis=1)
    p = p / row_sum[:, None]
    o = _dot(p.to(v.dtype), v, F32)
    tl.store(O + offs_n[:, None] * so_n + offs_d[None, :], o.to(O.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + offs_n, row_max + tl.log(row_sum), mask=row_ok)
    return p


@triton.jit
def _forward_kernel(
    Q, KF, VF, KB, VB, BIAS_F, BIAS_B, OF, OB, LSE, PART,
    sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, so_b, so_h, so_n,
    H, NQ, M, D, N_PART, row_start, scale,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, F32: tl.constexpr, PART_ROWS: tl.constexpr,
):
    pid_n, b, offs_n, offs_m, offs_d, row_ok, col_ok, d_ok, bias_f, bias_b = _row_tile(
        BIAS_F, BIAS_B, NQ, M, D, BLOCK_N, BLOCK_M, BLOCK_D)
    w_f = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    w_b = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    lse_branch = H * NQ * tl.num_programs(1)
    for h in range(H):
        q = _head_q(Q, b, h, sq_b, sq_h, sq_n, offs_n, offs_d, row_ok, d_ok)
        kv = b * sk_b + h * sk_h
        o = b * so_b + h * so_h
        lse = LSE + (b * H + h) * NQ
        w_f += _attend_tile(q, KF + kv, VF + kv, OF + o, lse, bias_f, offs_n, offs_m, offs_d,
                            row_ok, col_ok, d_ok, sk_n, so_n, scale, F32)
        w_b += _attend_tile(q, KB + kv, VB + kv, OB + o, lse + lse_branch, bias_b, offs_n, offs_m, offs_d,
                            row_ok, col_ok, d_ok, sk_n, so_n, scale, F32)
    w_f = _pooled_map(w_f, offs_n, row_ok, row_start, H)
    w_b = _pooled_map(w_b, offs_n, row_ok, row_start, H)
    # Slots are PART_ROWS rows wide whatever BLOCK_N is: a program fills its first slot and zeroes the others it
    # covers, so every slot is written once per launch (no zero-fill, nothing left from an autotune trial).
    slot = pid_n * (BLOCK_N // PART_ROWS)
    part = PART + ((b * N_PART + slot) * 3) * M + offs_m
    tl.store(part, tl.sum(w_f * w_b, axis=0), mask=col_ok)
    tl.store(part + M, tl.sum(w_f * w_f, axis=0), mask=col_ok)
    tl.store(part + 2 * M, tl.sum(w_b * w_b, axis=0), mask=col_ok)
    for extra in tl.static_range(1, BLOCK_N // PART_ROWS):
        zero_ok = col_ok & (slot + extra < N_PART)
        for c in tl.static_range(3):
            tl.store(part + (extra * 3 + c) * M, tl.zeros([BLOCK_M], dtype=tl.float32), mask=zero_ok)


@triton.jit
def _stats_grad_kernel(
    Q, KF, KB, BIAS_F, BIAS_B, LSE, DSTATS, DW_F, DW_B,
    sq_b, sq_h, sq_n, sk_b, sk_h, sk_n,
    H, NQ, M, D, row_start, scale,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, F32: tl.constexpr,
):
    """dW_f = g0·W_b + 2·g1·W_f and dW_b = g0·W_f + 2·g2·W_b for rows >= row_start (0 above), g = dstats[b]."""
    _, b, offs_n, offs_m, offs_d, row_ok, col_ok, d_ok, bias_f, bias_b = _row_tile(
        BIAS_F, BIAS_B, NQ, M, D, BLOCK_N, BLOCK_M, BLOCK_D)
    w_f = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    w_b = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    lse_branch = H * NQ * tl.num_programs(1)
    for h in range(H):
        q = _head_q(Q, b, h, sq_b, sq_h, sq_n, offs_n, offs_d, row_ok, d_ok)
        kv = b * sk_b + h * sk_h
        lse_f = tl.load(LSE + (b * H + h) * NQ + offs_n, mask=row_ok, other=0.0)
        lse_b = tl.load(LSE + lse_branch + (b * H + h) * NQ + offs_n, mask=row_ok, other=0.0)
        w_f += tl.exp(_scores(q, KF + kv, bias_f, offs_m, offs_d, col_ok, d_ok, sk_n, scale, F32) - lse_f[:, None])
        w_b += tl.exp(_scores(q, KB + kv, bias_b, offs_m, offs_d, col_ok, d_ok, sk_n, scale, F32) - lse_b[:, None])
    w_f = _pooled_map(w_f, offs_n, row_ok, row_start, H)
    w_b = _pooled_map(w_b, offs_n, row_ok, row_start, H)
    g = DSTATS + b * 3 * M + offs_m
    g0 = tl.load(g, mask=col_ok, other=0.0)[None, :]
    g1 = tl.load(g + M, mask=col_ok, other=0.0)[None, :]
    g2 = tl.load(g + 2 * M, mask=col_ok, other=0.0)[None, :]
    out = (b * NQ + offs_n[:, None]) * M + offs_m[None, :]
    ok = row_ok[:, None] & col_ok[None, :]
    tl.store(DW_F + out, g0 * w_b + 2.0 * g1 * w_f, mask=ok)
    tl.store(DW_B + out, g0 * w_f + 2.0 * g2 * w_b, mask=ok)


@triton.jit
def _backward_kernel(
    Q, K, V, O, DO, BIAS, LSE, DW, DQ_PART, DQ, DK, DV,
    sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, so_b, so_h, so_n, sdo_b, sdo_h, sdo_n, sdk_b, sdk_h, sdk_n,
    H, NQ, M, D, scale,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, F32: tl.constexpr,
    ACCUMULATE: tl.constexpr, STATS_GRAD: tl.constexpr,
):
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = offs_m < M
    d_ok = offs_d < D
    kv_mask = col_ok[:, None] & d_ok[None, :]
    kv = b * sk_b + h * sk_h + offs_m[:, None] * sk_n + offs_d[None, :]
    k = tl.load(K + kv, mask=kv_mask, other=0.0)
    v = tl.load(V + kv, mask=kv_mask, other=0.0)
    bias = tl.load(BIAS + b * M + offs_m, mask=col_ok, other=float("-inf"))
    dk = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    Q += b * sq_b + h * sq_h
    O += b * so_b + h * so_h
    DO += b * sdo_b + h * sdo_h
    LSE += bh * NQ
    DQ += b * so_b + h * so_h
    DQ_PART += bh * NQ * D
    for start in range(0, NQ, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        row_ok = offs_n < NQ
        rows = row_ok[:, None] & d_ok[None, :]
        q = tl.load(Q + offs_n[:, None] * sq_n + offs_d[None, :], mask=rows, other=0.0)
        do = tl.load(DO + offs_n[:, None] * sdo_n + offs_d[None, :], mask=rows, other=0.0)
        o = tl.load(O + offs_n[:, None] * so_n + offs_d[None, :], mask=rows, other=0.0)
        lse = tl.load(LSE + offs_n, mask=row_ok, other=0.0)
        s = (_dot(q, tl.trans(k), F32) * scale).to(tl.float32) + bias[None, :]
        p = tl.where(row_ok[:, None], tl.exp(s - lse[:, None]), 0.0)
        dv += _dot(tl.trans(p.to(do.dtype)), do, F32)
        dp = _dot(do, tl.trans(v), F32)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
        if STATS_GRAD:
            dw = tl.load(DW + (b * NQ + offs_n[:, None]) * M + offs_m[None, :],
                         mask=row_ok[:, None] & col_ok[None, :], other=0.0) / H
            dp += dw
            delta += tl.sum(p * dw, axis=1)
        ds = p * (dp - delta[:, None])
        dk += _dot(tl.trans(ds.to(q.dtype)), q, F32)
        dq = (_dot(ds.to(k.dtype), k, F32) * scale).to(tl.float32)
        part = DQ_PART + offs_n[:, None] * D + offs_d[None, :]
        if ACCUMULATE:
            dq += tl.load(part, mask=rows, other=0.0)
            tl.store(DQ + offs_n[:, None] * so_n + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=rows)
        else:
            tl.store(part, dq, mask=rows)
    dkv = b * sdk_b + h * sdk_h + offs_m[:, None] * sdk_n + offs_d[None, :]
    tl.store(DK + dkv, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + dkv, dv.to(DV.dtype.element_ty), mask=kv_mask)


def _configs(shapes, stages):
    return [triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=s) for n, w in shapes for s in stages]


# (BLOCK_N, num_warps) pairs whose sm_90 builds spill little or nothing (ptxas, bf16, M=77, d=64): a 128-key
# tile of k or v alone is 64 pointers per thread at 4 warps, so wide row tiles need 8 warps.
AUTOTUNE = not INTERPRET and os.environ.get("FBA_TRITON_AUTOTUNE", "1") != "0"
if AUTOTUNE:
    _forward = triton.autotune(
        _configs([(16, 4), (16, 8), (32, 8), (64, 8)], [1]), key=["H", "NQ", "M", "D", "F32"]
    )(_forward_kernel)
    _backward = triton.autotune(
        _configs([(16, 4), (32, 8), (64, 8)], [1, 2]), key=["H", "NQ", "M", "D", "F32", "ACCUMULATE", "STATS_GRAD"]
    )(_backward_kernel)
    _stats_grad = triton.autotune(
        _configs([(16, 4), (16, 8), (32, 8)], [1]), key=["H", "NQ", "M", "D", "F32"]
    )(_stats_grad_kernel)
    FORWARD_CONFIG = BACKWARD_CONFIG = STATS_GRAD_CONFIG = {}
elif INTERPRET:  # the interpreter cannot autotune
    _forward, _backward, _stats_grad = _forward_kernel, _backward_kernel, _stats_grad_kernel
    FORWARD_CONFIG = BACKWARD_CONFIG = STATS_GRAD_CONFIG = {"BLOCK_N": MIN_BLOCK_N}
else:  # FBA_TRITON_AUTOTUNE=0: no search (quick GPU test runs)
    _forward, _backward, _stats_grad = _forward_kernel, _backward_kernel, _stats_grad_kernel
    FORWARD_CONFIG = STATS_GRAD_CONFIG = {"BLOCK_N": 16, "num_warps": 8}
    BACKWARD_CONFIG = {"BLOCK_N": 32, "num_warps": 8}


def _empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer a kernel fills whole; tests replace this to poison them with NaN."""
    return torch.empty(shape, dtype=dtype, device=device)


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _bias(valid: torch.Tensor) -> torch.Tensor:
    return torch.zeros(valid.shape, dtype=torch.float32, device=valid.device).masked_fill_(~valid, float("-inf"))


def _exact(dtype: torch.dtype) -> bool:
    return bool(INTERPRET) or dtype == torch.float32


Tensor = torch.Tensor


def forward(
    q: Tensor, k_f: Tensor, v_f: Tensor, k_b: Tensor, v_b: Tensor, valid_f: Tensor, valid_b: Tensor, row_start: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns o_f, o_b [B,H,Nq,d] (contiguous, q's dtype), stats [B,3,M] fp32 and lse [2,B,H,Nq] fp32.

    k_f, v_f, k_b, v_b must share one stride layout and every tensor a unit stride on its last axis.
    """
    batch, heads, nq, dim = q.shape
    m = k_f.shape[2]
    o_f = _empty((batch, heads, nq, dim), q.dtype, q.device)
    o_b = _empty((batch, heads, nq, dim), q.dtype, q.device)
    lse = _empty((2, batch, heads, nq), torch.float32, q.device)
    n_part = triton.cdiv(nq, MIN_BLOCK_N)
    part = _empty((batch, n_part, 3, m), torch.float32, q.device)
    grid = lambda meta: (triton.cdiv(nq, meta["BLOCK_N"]), batch)  # noqa: E731
    _forward[grid](
        q, k_f, v_f, k_b, v_b, _bias(valid_f), _bias(valid_b), o_f, o_b, lse, part,
        q.stride(0), q.stride(1), q.stride(2), k_f.stride(0), k_f.stride(1), k_f.stride(2),
        o_f.stride(0), o_f.stride(1), o_f.stride(2),
        heads, nq, m, dim, n_part, row_start, dim ** -0.5,
        BLOCK_M=_block(m), BLOCK_D=_block(dim), F32=_exact(q.dtype), PART_ROWS=MIN_BLOCK_N, **FORWARD_CONFIG,
    )
    return o_f, o_b, part.sum(1), lse


def stats_map_grads(
    q: Tensor, k_f: Tensor, k_b: Tensor, valid_f: Tensor, valid_b: Tensor, lse: Tensor, dstats: Tensor, row_start: int,
) -> tuple[Tensor, Tensor]:
    """dW_f, dW_b [B,Nq,M] fp32: the gradient of the head-averaged maps from that of the stats (contiguous)."""
    batch, heads, nq, dim = q.shape
    m = k_f.shape[2]
    dw_f = _empty((batch, nq, m), torch.float32, q.device)
    dw_b = _empty((batch, nq, m), torch.float32, q.device)
    grid = lambda meta: (triton.cdiv(nq, meta["BLOCK_N"]), batch)  # noqa: E731
    _stats_grad[grid](
        q, k_f, k_b, _bias(valid_f), _bias(valid_b), lse, dstats, dw_f, dw_b,
        q.stride(0), q.stride(1), q.stride(2), k_f.stride(0), k_f.stride(1), k_f.stride(2),
        heads, nq, m, dim, row_start, dim ** -0.5,
        BLOCK_M=_block(m), BLOCK_D=_block(dim), F32=_exact(q.dtype), **STATS_GRAD_CONFIG,
    )
    return dw_f, dw_b


def backward(
    q: Tensor, k_f: Tensor, v_f: Tensor, k_b: Tensor, v_b: Tensor, valid_f: Tensor, valid_b: Tensor,
    o_f: Tensor, o_b: Tensor, lse: Tensor, do_f: Tensor, do_b: Tensor, dstats: Tensor | None = None,
    row_start: int = 1,
) -> tuple[Tensor, ...]:
    """Gradients (dq, dk_f, dv_f, dk_b, dv_b) from the saved outputs and log-sum-exp, with the stats' term when
    ``dstats`` [B,3,M] fp32 (contiguous) is given.

    o_* are ``forward``'s contiguous outputs; do_* need a unit stride on their last axis.
    """
    batch, heads, nq, dim = q.shape
    m = k_f.shape[2]
    dq = _empty(o_f.shape, q.dtype, q.device)
    dq_part = _empty((batch, heads, nq, dim), torch.float32, q.device)
    stats_grad = dstats is not None
    dws = stats_map_grads(q, k_f, k_b, valid_f, valid_b, lse, dstats, row_start) if stats_grad else (lse, lse)
    grads = []
    grid = (batch * heads,)
    for accumulate, (k, v, o, do, valid, lse_branch, dw) in enumerate(
        ((k_f, v_f, o_f, do_f, valid_f, lse[0], dws[0]), (k_b, v_b, o_b, do_b, valid_b, lse[1], dws[1]))
    ):
        dk = _empty(k.shape, k.dtype, k.device)  # contiguous, whatever k's layout
        dv = _empty(k.shape, k.dtype, k.device)
        _backward[grid](
            q, k, v, o, do, _bias(valid), lse_branch, dw, dq_part, dq, dk, dv,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            o.stride(0), o.stride(1), o.stride(2), do.stride(0), do.stride(1), do.stride(2),
            dk.stride(0), dk.stride(1), dk.stride(2), heads, nq, m, dim, dim ** -0.5,
            BLOCK_M=_block(m), BLOCK_D=_block(dim), F32=_exact(q.dtype), ACCUMULATE=bool(accumulate),
            STATS_GRAD=stats_grad, **BACKWARD_CONFIG,
        )
        grads += [dk, dv]
    return (dq, *grads)
