"""Fixtures of the model tests: tiny checkpoints, captions and images."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from open_clip.model import CLIP
from tiny_clip import IMAGE_SIZE, tiny_open_clip

from fba.model import tokenize


@pytest.fixture(scope="session")
def clip_checkpoint(tmp_path_factory) -> tuple[CLIP, Path]:
    clip = tiny_open_clip()
    path = tmp_path_factory.mktemp("clip") / "tiny_openclip.pt"
    torch.save(clip.state_dict(), path)
    return clip, path


@pytest.fixture
def captions() -> tuple[torch.Tensor, torch.Tensor]:
    fg = tokenize([
        "a man in a red jacket with a black backpack",
        "a woman wearing a white dress",
        "a person in blue jeans and a grey hoodie carrying a bag",
        "a child",
    ])
    bg = tokenize([
        "a parked car behind him on the street",
        "a tree and a bench",
        "a glass door",
        "a crowd of people and a bus in the background partly covering the person",
    ])
    return fg, bg


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, *IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
