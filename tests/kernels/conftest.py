"""Kernel tests run the Triton kernels in the CPU interpreter when there is no GPU (``TRITON_INTERPRET=1``,
set by ``tests/conftest.py`` before anything imports Triton)."""
from __future__ import annotations

import pytest
import torch

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
