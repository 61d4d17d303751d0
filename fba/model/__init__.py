"""The FBA model: ``build_model(cfg.model, num_classes, image_size)`` is the one factory."""
from __future__ import annotations

from .backbone import ARCHS, get_arch, load_clip_checkpoint
from .fba import FBA, RETRIEVAL_FEATURES, build_model, select_feature
from .text import TextEncoder, TextFeatureCache, TextFeatures, tokenize

__all__ = [
    "ARCHS",
    "FBA",
    "RETRIEVAL_FEATURES",
    "TextEncoder",
    "TextFeatureCache",
    "TextFeatures",
    "build_model",
    "get_arch",
    "load_clip_checkpoint",
    "select_feature",
    "tokenize",
]
