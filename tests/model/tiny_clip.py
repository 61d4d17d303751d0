"""Helpers of the model tests: a tiny open_clip CLIP (the ``tiny`` arch's twin) and the tiny FBA."""
from __future__ import annotations

import warnings

import torch
from open_clip.model import CLIP

from fba.config import ModelConfig
from fba.model import build_model

IMAGE_SIZE = (48, 32)  # stride 12 -> a 3 x 2 grid, 7 tokens with CLS
NUM_CLASSES = 3


def tiny_open_clip(seed: int = 0) -> CLIP:
    """open_clip's own CLIP at the sizes of fba's ``tiny`` arch, randomly initialised."""
    torch.manual_seed(seed)
    vision = dict(image_size=224, layers=2, width=128, patch_size=16, head_width=32)
    text = dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2)
    model = CLIP(64, vision, text, quick_gelu=True)
    with torch.no_grad():  # open_clip leaves some tensors at zero/one; make every weight matter
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model.eval()


def build_tiny(**overrides) -> torch.nn.Module:
    cfg = ModelConfig(arch="tiny", **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "starts from random weights"
        return build_model(cfg, NUM_CLASSES, IMAGE_SIZE)
