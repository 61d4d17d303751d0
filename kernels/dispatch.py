"""The dispatcher of the cross-modal attention: which path runs for a ``backend`` and the inputs' device.

``backend`` (config ``model.kernel``): ``auto`` = the custom op ``fba::cross_attention_with_stats``, which routes by
device (Triton for CUDA tensors it supports, the PyTorch kernels for CPU tensors); ``triton`` or ``cuda`` force that
kernel inside the op (``triton`` runs on CPU tensors only under ``TRITON_INTERPRET=1``, the tests'); ``reference``
is the plain PyTorch decomposition, no custom op, which :func:`decomposed` forces whatever the backend (the ONNX
export and the tests use that one switch).
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F

from . import cross_attention, cross_attention_op

BACKENDS = ("auto", "reference", "triton", "cuda")
_log = logging.getLogger(__name__)
_warned: set[str] = set()
_decomposed = False


@contextlib.contextmanager
def decomposed() -> Iterator[None]:
    """Run the plain PyTorch decomposition instead of the custom op, whatever the backend: the one switch to the
    reference attention, for exporters that cannot carry a custom op (ONNX) and for tests; ``torch.export`` keeps
    the op as it is (docs/kernels.md, "Export")."""
    global _decomposed
    previous, _decomposed = _decomposed, True
    try:
        yield
    finally:
        _decomposed = previous


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        _log.warning(message)


class CrossModalAttention(NamedTuple):
    img: torch.Tensor  # [nb*B, H, N, d] image rows over each caption branch (fg block first)
    txt: torch.Tensor  # [nb*B, H, M, d] caption rows over the image
    stats: torch.Tensor | None  # [B, 3, M] fp32 column sums for differential pooling


def cross_attention_with_stats(
    q: torch.Tensor,
    k_f: torch.Tensor,
    v_f: torch.Tensor,
    k_b: torch.Tensor,
    v_b: torch.Tensor,
    valid_f: torch.Tensor,
    valid_b: torch.Tensor,
    row_start: int = 1,
    backend: str = "auto",
    pool_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image queries over both captions plus the column statistics; semantics in ``cross_attention.reference``.

    The stats carry a gradient only with ``pool_grad`` (gradients through the pooling weights): the fused
    backward then adds their term, without materialising the maps.
    """
    if backend == "reference" or _decomposed:  # decomposed() overrides every backend, before it is checked
        return cross_attention.reference(q, k_f, v_f, k_b, v_b, valid_f, valid_b, row_start)
    chosen = resolve_backend(backend, q, k_f)
    return cross_attention_op.fused(q, k_f, v_f, k_b, v_b, valid_f, valid_b, row_start, backend=chosen,
                                 stats_grad=pool_grad)


def resolve_backend(backend: str, q: torch.Tensor, k: torch.Tensor) -> str:
    """The kernels that run for ``backend`` on these inputs: auto picks Triton for CUDA tensors it supports."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; known: {', '.join(BACKENDS)}")
    if backend == "auto":
        if not q.is_cuda:
            return "reference"
        reason = cross_attention.unsupported_reason(q, k)
        if reason:
            _warn_once(f"fba.kernels: fused cross-attention cannot take {reason}; using the reference path")
            return "reference"
        return "triton"
    if backend == "cuda" and not q.is_cuda:
        raise ValueError("kernel backend 'cuda' needs CUDA tensors; use 'auto' or 'reference' on CPU")
    if backend == "triton" and not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("kernel backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter); "
                         "use 'auto' or 'reference' on CPU")
    return backend


def cross_modal_attention(
    q_img: torch.Tensor,
    k_img: torch.Tensor,
    v_img: torch.Tensor,
    q_txt: torch.Tensor,
    k_txt: torch.Tensor,
    v_txt: torch.Tensor,
    txt_valid: torch.Tensor,
    need_stats: bool = False,
    row_start: int = 1,
    backend: str = "auto",
    pool_grad: bool = False,
) -> CrossModalAttention:
    """Both directions of the shared cross-attention for ``nb`` caption branches (1 = fg, 2 = fg then bg).

    q/k/v_img [B,H,N,d] come from the image; q/k/v_txt [nb*B,H,M,d] from the captions stacked on the batch
    axis; txt_valid [nb*B,M] bool marks real caption tokens. The image keys are shared by every branch, so the
    text->image direction folds the branches into the query axis instead of repeating the keys.
    """
    batch, heads, _, dim = q_img.shape
    nb = q_txt.shape[0] // batch
    stats = None
    if need_stats:
        if nb != 2:
            raise ValueError("column statistics need both caption branches (fg and bg)")
        o_f, o_b, stats = cross_attention_with_stats(
            q_img, k_txt[:batch], v_txt[:batch], k_txt[batch:], v_txt[batch:],
            txt_valid[:batch], txt_valid[batch:], row_start, backend=backend, pool_grad=pool_grad,
        )
        img = torch.cat([o_f, o_b])
    else:
        q_rep = q_img.repeat(nb, 1, 1, 1)
        img = F.scaled_dot_product_attention(q_rep, k_txt, v_txt, attn_mask=txt_valid[:, None, None, :])
    m = q_txt.shape[2]
    q_fold = q_txt.view(nb, batch, heads, m, dim).permute(1, 2, 0, 3, 4).reshape(batch, heads, nb * m, dim)
    txt = F.scaled_dot_product_attention(q_fold, k_img, v_img)
    txt = txt.view(batch, heads, nb, m, dim).permute(2, 0, 1, 3, 4).reshape(nb * batch, heads, m, dim)
    return CrossModalAttention(img, txt, stats)
