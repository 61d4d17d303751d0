"""Tiny images and a tiny Market-1501 tree (the layout the synthetic generator writes), shared by the tests.

A module of its own (on the test path through pyproject's ``pythonpath``), not ``conftest``: several folders
have a conftest.py, so ``from conftest import`` would pick whichever was imported first.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

MARKET_FILES = {
    "bounding_box_train": [
        "0002_c1s1_000451_01.jpg", "0002_c2s1_000551_01.jpg", "0002_c3s1_000651_01.jpg",
        "0007_c1s1_000101_01.jpg", "0007_c2s1_000201_01.jpg",
        "0011_c3s2_000301_02.jpg", "0011_c1s2_000401_02.jpg", "0011_c2s2_000501_02.jpg", "0011_c3s2_000601_02.jpg",
    ],
    "query": ["0003_c1s1_000010_00.jpg", "0005_c2s1_000020_00.jpg"],
    "bounding_box_test": [
        "0003_c2s1_000030_01.jpg", "0005_c1s1_000040_01.jpg", "0000_c3s1_000050_01.jpg",
        "-1_c1s1_000060_01.jpg", "-1_c2s1_000070_01.jpg",
    ],
}


def write_image(path: Path, width: int = 12, height: int = 20, seed: int = 0) -> Path:
    """A small random RGB image; the format follows the suffix (jpg, png, tif)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def make_market_tree(root: Path, files: dict[str, list[str]] = MARKET_FILES) -> Path:
    relatives = [f"{folder}/{name}" for folder, names in files.items() for name in names]
    for seed, relative in enumerate(relatives):
        write_image(root / relative, seed=seed)
    return root
