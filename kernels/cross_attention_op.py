"""The fused cross-attention with stats as ``torch.library`` custom ops, so ``torch.compile`` and ``torch.export``
see one opaque node with a known output shape instead of tracing into Triton (docs/kernels.md, "Compiler").

- ``fba::cross_attention_with_stats`` (forward): o_f, o_b, stats and the row log-sum-exp;
- ``fba::cross_attention_with_stats_backward``: dq, dk_f, dv_f, dk_b, dv_b, the stats' term included when given
  their gradient;
- fake (meta) implementations give the compiler the outputs' shapes, dtypes and (contiguous) strides;
- ``register_autograd`` ties them together: the backward op runs from the saved inputs, outputs and lse;
- FLOP formulas for ``torch.utils.flop_counter``: the matmuls the plain decomposition does (forward QKᵀ and PV
  per branch; backward twice that, recomputation not counted), as ``fba.model.flops`` counts attention.

The ops route by device (``torch.library``'s ``register_kernel``): CUDA tensors run Triton, CPU tensors the PyTorch
kernels. ``backend`` overrides that choice where a test or a benchmark asks: ``cuda`` (the CUDA C++ forward,
Triton backward), ``reference`` (the PyTorch kernels on CUDA tensors too), ``triton`` on CPU tensors (Triton's
interpreter, ``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from . import cross_attention

if __name__ != "fba.kernels.cross_attention_op":  # docs/kernels.md, "One definition"
    raise ImportError(f"{__name__}: import fba.kernels.cross_attention_op, the one module defining the fba:: ops")


def _unit_last(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _check_backend(op: str, backend: str) -> None:
    if backend not in cross_attention.OP_BACKENDS:
        raise ValueError(f"fba::{op}: unknown backend {backend!r}; known: {', '.join(cross_attention.OP_BACKENDS)}")


def _cpu_kernel(op: str, backend: str) -> str:
    """What runs for tensors off CUDA: the PyTorch kernels, or Triton's interpreter when the tests ask for it."""
    _check_backend(op, backend)
    if backend == "cuda":
        raise ValueError(f"fba::{op}: backend 'cuda' needs CUDA tensors")
    return backend


@torch.library.custom_op("fba::cross_attention_with_stats", mutates_args=())
def cross_attention_with_stats(
    q: Tensor, k_f: Tensor, v_f: Tensor, k_b: Tensor, v_b: Tensor, valid_f: Tensor, valid_b: Tensor,
    row_start: int, backend: str, stats_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """o_f, o_b [B,H,Nq,d] (q's dtype), stats [B,3,M] fp32, lse [2,B,H,Nq] fp32. ``stats_grad`` is read by the
    backward only: whether it adds the stats' term. This is the kernel of every device without its own (the CPU):
    the PyTorch kernels, or Triton's interpreter for ``backend="triton"``."""
    if _cpu_kernel("cross_attention_with_stats", backend) == "triton":
        from . import cross_attention_triton

        return cross_attention_triton.forward(q, k_f, v_f, k_b, v_b, valid_f, valid_b, row_start)
    return cross_attention.reference_forward(q, k_f, v_f, k_b, v_b, valid_f, valid_b, row_start)


@cross_attention_with_stats.register_kernel("cuda")
def _forward_cuda(q, k_f, v_f, k_b, v_b, valid_f, valid_b, row_start, backend, stats_grad):
    """CUDA tensors: Triton (the default), the CUDA C++ forward for ``backend="cuda"``, or the PyTorch kernels for
    ``backend="reference"`` (a test's override)."""
    _check_backend("cross_attention_with_stats", backend)
    if backend == "reference":
        return cross_attention.reference_forward(q, k_f, v_f, k_b, v_b, valid_f, valid_b, row_start)
    if backend == "cuda":
        from . import cross_attention_cuda

        return cross_attention_cuda.forward(q, k_f, v_f, k_b, v_b, valid_f, valid_b, row_start)
    from . import cross_attention_triton

    return cross_attention_triton.forward(q, k_f, v_f, k_b, v_b, valid_f, valid_b, row_start)


@cross_attention_with_stats.register_fake
def _forward_fake(q, k_f, v_f, k_b, v_b, valid_f, valid_b, row_start, backend, stats_grad):
    batch, heads, nq, dim = q.shape
    m = k_f.shape[2]
    out = q.new_empty((batch, heads, nq, dim))
    return (out, torch.empty_like(out), q.new_empty((batch, 3, m), dtype=torch.float32),
            q.new_empty((2, batch, heads, nq), dtype=torch.float32))


@torch.library.custom_op("fba::cross_attention_with_stats_backward", mutates_args=())
def cross_attention_with_stats_backward(
    q: Tensor, k_f: Tensor, v_f: Tensor, k_b: Tensor, v_b: Tensor, valid_f: Tensor, valid_b: Tensor,
    o_f: Tensor, o_b: Tensor, lse: Tensor, do_f: Tensor, do_b: Tensor, dstats: Tensor | None,
    row_start: int, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk_f, dv_f, dk_b, dv_b), contiguous, in the inputs' dtypes; ``dstats`` None: the stats' term is 0.
    Off CUDA: the PyTorch kernels, or Triton's interpreter for ``backend="triton"``."""
    if _cpu_kernel("cross_attention_with_stats_backward", backend) == "triton":
        return _triton_backward(q, k_f, v_f, k_b, v_b, valid_f, valid_b, o_f, o_b, lse, do_f, do_b, dstats, row_start)
    return cross_attention.reference_backward(q, k_f, v_f, k_b, v_b, valid_f, valid_b, lse, do_f, do_b, dstats,
                                              row_start)


@cross_attention_with_stats_backward.register_kernel("cuda")
def _backward_cuda(q, k_f, v_f, k_b, v_b, valid_f, valid_b, o_f, o_b, lse, do_f, do_b, dstats, row_start, backend):
    """CUDA tensors: the Triton backward (for the CUDA C++ forward too), or the PyTorch kernels for
    ``backend="reference"``."""
    _check_backend("cross_attention_with_stats_backward", backend)
    if backend == "reference":
        return cross_attention.reference_backward(q, k_f, v_f, k_b, v_b, valid_f, valid_b, lse, do_f, do_b, dstats,
                                                  row_start)
    return _triton_backward(q, k_f, v_f, k_b, v_b, valid_f, valid_b, o_f, o_b, lse, do_f, do_b, dstats, row_start)


def _triton_backward(q, k_f, v_f, k_b, v_b, valid_f, valid_b, o_f, o_b, lse, do_f, do_b, dstats, row_start):
    from . import cross_attention_triton

    return tuple(cross_attention_triton.backward(
        q, k_f, v_f, k_b, v_b, valid_f, valid_b, o_f, o_b, lse, _unit_last(do_f), _unit_last(do_b),
        dstats=None if dstats is None else dstats.contiguous(), row_start=row_start,
    ))


@cross_attention_with_stats_backward.register_fake
def _backward_fake(q, k_f, v_f, k_b, v_b, valid_f, valid_b, o_f, o_b, lse, do_f, do_b, dstats, row_start, backend):
    return (q.new_empty(q.shape), *(t.new_empty(t.shape) for t in (k_f, v_f, k_b, v_b)))


def _setup_context(ctx, inputs, output) -> None:
    q, k_f, v_f, k_b, v_b, valid_f, valid_b, row_start, backend, stats_grad = inputs
    o_f, o_b, _stats, lse = output
    ctx.save_for_backward(q, k_f, v_f, k_b, v_b, valid_f, valid_b, o_f, o_b, lse)
    ctx.row_start, ctx.backend, ctx.stats_grad = row_start, backend, stats_grad


def _backward(ctx, do_f, do_b, dstats, _dlse):
    q, k_f, v_f, k_b, v_b, valid_f, valid_b, o_f, o_b, lse = ctx.saved_tensors
    do_f = torch.zeros_like(o_f) if do_f is None else do_f
    do_b = torch.zeros_like(o_b) if do_b is None else do_b
    grads = cross_attention_with_stats_backward(
        q, k_f, v_f, k_b, v_b, valid_f, valid_b, o_f, o_b, lse, do_f, do_b,
        dstats if ctx.stats_grad else None, ctx.row_start, ctx.backend,
    )
    return (*grads, None, None, None, None, None)


cross_attention_with_stats.register_autograd(_backward, setup_context=_setup_context)


def _attention_flops(q_shape, k_shape) -> int:
    """2·B·H·N·M·d per matmul, two matmuls (QKᵀ, PV) per branch, two branches."""
    batch, heads, nq, dim = q_shape
    return 2 * 2 * 2 * batch * heads * nq * k_shape[2] * dim


@register_flop_formula(torch.ops.fba.cross_attention_with_stats)
def _forward_flops(q_shape, k_shape, *args, out_shape=None, **kwargs) -> int:
    return _attention_flops(q_shape, k_shape)


@register_flop_formula(torch.ops.fba.cross_attention_with_stats_backward)
def _backward_flops(q_shape, k_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * _attention_flops(q_shape, k_shape)


def fused(
    q: Tensor,
    k_f: Tensor,
    v_f: Tensor,
    k_b: Tensor,
    v_b: Tensor,
    valid_f: Tensor,
    valid_b: Tensor,
    row_start: int = 1,
    backend: str = "triton",
    stats_grad: bool = False,
):
    """``reference``'s outputs through the custom op, without materialising the maps (``backend`` triton or cuda;
    ``reference`` runs the op's PyTorch kernels). Differentiable in q, k_*, v_*; the stats too with ``stats_grad``
    (else they come back detached, and the backward skips their term)."""
    cross_attention.check_inputs(q, k_f, v_f, k_b, v_b, valid_f, valid_b, fused_kernel=backend != "reference")
    q = _unit_last(q)
    k_f, v_f, k_b, v_b = cross_attention.shared_layout(k_f, v_f, k_b, v_b)
    o_f, o_b, stats, _lse = cross_attention_with_stats(
        q, k_f, v_f, k_b, v_b, valid_f.contiguous(), valid_b.contiguous(), int(row_start), backend, bool(stats_grad)
    )
    return o_f, o_b, stats if stats_grad else stats.detach()
