"""The data layer: data set readers, captions, the P x K sampler, transforms and loaders.

The readers and captions are plain Python and imported at once; names that need torch / torchvision are
imported on first use, so ``fba synth`` or reading a data set does not pay for them (and nothing here ever
imports DALI or open_clip).
"""
from __future__ import annotations

import importlib
from typing import Any

from fba.data.captions import BG_PROMPT, FG_PROMPT, Caption, CaptionBank, CaptionError, CaptionStore, attach_captions
from fba.data.datasets import DATASETS, DatasetError, ReIDDataset, build_dataset, register
from fba.data import folder as _folder  # noqa: F401  (registers data.dataset=folder)

_LAZY = {
    "PKSampler": "fba.data.sampler",
    "CLIP_MEAN": "fba.data.transforms",
    "CLIP_STD": "fba.data.transforms",
    "ImageDataset": "fba.data.transforms",
    "ImageReadError": "fba.data.transforms",
    "TrainLoader": "fba.data.transforms",
    "build_train_transform": "fba.data.transforms",
    "build_eval_transform": "fba.data.transforms",
    "build_train_loader": "fba.data.transforms",
    "build_eval_loader": "fba.data.transforms",
}

__all__ = [
    "BG_PROMPT", "FG_PROMPT", "Caption", "CaptionBank", "CaptionError", "CaptionStore", "attach_captions",
    "DATASETS", "DatasetError", "ReIDDataset", "build_dataset", "register", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fba.data' has no attribute {name!r}")
