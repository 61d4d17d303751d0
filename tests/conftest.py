"""Shared test fixtures: a tiny Market-1501 tree."""
from __future__ import annotations

from pathlib import Path

import pytest

from image_trees import make_market_tree


@pytest.fixture
def market_root(tmp_path: Path) -> Path:
    """A Market-1501 tree: 3 training ids (9 images), 2 query ids, a gallery with one distractor and two junk."""
    return make_market_tree(tmp_path / "market")
