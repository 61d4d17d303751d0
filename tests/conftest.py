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


@pytest.fixture
def cli_error(capsys):
    """Run ``fba ARGV`` and check it failed as bad input must: exit 2, one line ``fba CMD: error: ...`` on
    stderr matching ``pattern``; returns that line."""
    import re

    from fba.cli import main

    def run(argv: list[str], pattern: str) -> str:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
        err = capsys.readouterr().err
        line = err.replace("\r", "\n").strip().splitlines()[-1]  # a progress bar may precede it
        assert code == 2, err
        assert err.endswith("\n") and err.count("error:") == 1 and line.startswith(f"fba {argv[0]}: error: "), err
        assert re.search(pattern, line), err
        return line

    return run
