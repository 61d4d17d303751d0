"""Shared test fixtures: a tiny Market-1501 tree; and the Triton interpreter on machines without a GPU.

``triton.jit`` picks interpreter or compiler when a function is defined (Triton's own library included), so
``TRITON_INTERPRET=1`` is set here, when pytest loads this file, before any test module can import Triton
(``import torch`` does not). A value the caller set is kept.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from image_trees import make_market_tree


@pytest.fixture
def market_root(tmp_path: Path) -> Path:
    """A Market-1501 tree: 3 training ids (9 images), 2 query ids, a gallery with one distractor and two junk."""
    return make_market_tree(tmp_path / "market")
