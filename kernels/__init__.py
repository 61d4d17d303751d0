"""Fused kernels of FBA: fused paths for CUDA tensors, the PyTorch reference on CPU (re-exports only).

Every op has a plain PyTorch ``reference`` twin in its own file; the fused versions are tested against it.
``cross_modal_attention`` (:mod:`.dispatch`) is the one entry point the cross-modal module calls for all four
attentions; :mod:`.cross_attention_op` holds the custom ops, which route by device through ``torch.library``.
"""
from __future__ import annotations

import sys

if __name__ != "fba.kernels":
    # Imported as the top-level ``kernels`` (the checkout's root on sys.path; transformers imports that name): the
    # name is Hugging Face's package where one is installed, else fba.kernels itself, never a second copy
    # re-defining the fba:: custom ops (docs/kernels.md, "One definition").
    import importlib.machinery
    import importlib.util
    import os

    _checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _elsewhere = [p for p in sys.path if os.path.abspath(p or os.curdir) != _checkout]
    _spec = importlib.machinery.PathFinder.find_spec(__name__, _elsewhere)
    if _spec is not None:
        _theirs = importlib.util.module_from_spec(_spec)
        sys.modules[__name__] = _theirs
        _spec.loader.exec_module(_theirs)
    else:
        import fba.kernels

        sys.modules[__name__] = sys.modules["fba.kernels"]
else:
    from . import cross_attention, cross_attention_op  # noqa: F401 - registers torch.ops.fba.*
    from .dispatch import (
        BACKENDS, CrossModalAttention, cross_attention_with_stats, cross_modal_attention, decomposed, resolve_backend,
    )

__all__ = [
    "BACKENDS", "CrossModalAttention", "cross_attention_with_stats", "cross_modal_attention", "decomposed",
    "resolve_backend",
]
