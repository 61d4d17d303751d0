"""The FBA model: ``build_model(cfg.model, num_classes, image_size)`` is the one factory."""
from __future__ import annotations

from .backbone import ARCHS, get_arch, load_clip_checkpoint
from .fba import FBA, build_model
from .text import TextEncoder, TextFeatureCache, TextFeatures, tokenize

__all__ = [
    "ARCHS",
    "FBA",
    "TextEncoder",
    "TextFeatureCache",
    "TextFeatures",
    "build_model",
    "get_arch",
    "load_clip_checkpoint",
    "tokenize",
]
