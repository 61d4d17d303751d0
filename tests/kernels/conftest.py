"""Kernel tests run the Triton kernels in the CPU interpreter when there is no GPU.

``triton.jit`` picks interpreter or compiler when a function is defined, Triton's own library included, so
``TRITON_INTERPRET`` must be set before ``import triton``. Other test modules may have imported it already
(``torch._dynamo`` does, through open_clip), so here its Python modules are dropped and re-imported under the
interpreter; the compiled core ``triton._C`` stays loaded, and nothing on a CPU-only run uses the old modules.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch


def _use_triton_interpreter() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    os.environ["TRITON_INTERPRET"] = "1"
    stale = [n for n in sys.modules if n.split(".")[0] == "triton" and not n.startswith("triton._C")]
    for name in stale + ["fba.kernels.cross_attention_triton"]:
        sys.modules.pop(name, None)
    package = sys.modules.get("fba.kernels")
    if package is not None and hasattr(package, "cross_attention_triton"):
        delattr(package, "cross_attention_triton")


if not torch.cuda.is_available():
    _use_triton_interpreter()

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer the Triton kernels fill starts as NaN, so an unwritten element fails the comparison."""
    from fba.kernels import cross_attention_triton

    def nan_empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(cross_attention_triton, "_empty", nan_empty)
