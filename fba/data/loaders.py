"""The one data-loader factory: the data set with its captions, and the DALI-or-torch loaders built from a config.

Every job that reads images goes through here (``fba train``, ``fba eval``, ``fba embed``, the demo, the
benchmarks), so they all read the same data the same way. :func:`load_data` reads the data set named by
``cfg.data`` and attaches its captions; :class:`Loaders` decides once, for a device, whether DALI or torch
decodes (``data.loader``: ``auto`` is DALI on a GPU when it is installed, torch on the CPU) and then builds the
P x K training loader and the in-order evaluation loaders with that choice. Both loader kinds give the same
batch dict (``images``, ``pids``, ``camids``, ``index``); docs/input_pipeline.md compares them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fba.config import Config
from fba.data import transforms
from fba.data.captions import CaptionStore, attach_captions
from fba.data.datasets import Item, ReIDDataset, build_dataset


def load_data(cfg: Config, captions: bool | None = None, eval_only: bool = False) -> tuple[ReIDDataset, CaptionStore | None]:
    """The data set of ``cfg.data`` with its captions attached; ``captions`` defaults to whether the model uses them.

    ``eval_only`` leaves the training split out, so only query and gallery images need captions.
    """
    dataset = build_dataset(cfg.data.dataset, cfg.data.root, **cfg.data.options)
    if eval_only:
        dataset = dataclasses.replace(dataset, train=[])
    if not (cfg.model.cross_modal if captions is None else captions):
        return dataset, None
    path = Path(cfg.data.captions) if cfg.data.captions else dataset.root / "captions.jsonl"
    store = CaptionStore.load(path)
    dataset, _ = attach_captions(dataset, store, cfg.data.allow_missing_captions)
    return dataset, store


def dali_available() -> bool:
    try:
        import fba.data.dali  # noqa: F401  (DALI is an optional dependency)
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Loaders:
    """Training and evaluation loaders of one config on one device, all DALI or all torch.

    Build it with :meth:`for_device`, which makes the choice; ``dali`` says which it made.
    """

    cfg: Config
    dali: bool

    @classmethod
    def for_device(cls, cfg: Config, device: torch.device | str) -> Loaders:
        """``data.loader=dali`` needs DALI installed (its ImportError says how); ``auto`` takes DALI on a GPU
        when it is installed and torch otherwise."""
        choice = cfg.data.loader
        if choice == "dali":
            import fba.data.dali  # noqa: F401  (raises the ImportError that names the package)

            return cls(cfg, True)
        on_gpu = torch.device(device).type == "cuda"
        return cls(cfg, choice == "auto" and on_gpu and dali_available())

    @property
    def kind(self) -> str:
        return "dali" if self.dali else "torch"

    def train(self, items: Sequence[Item], rank: int | None = None, world_size: int | None = None):
        """P x K batches of augmented training images (``set_epoch``, ``len``, ``state_dict`` as the trainer needs)."""
        if self.dali:
            from fba.data.dali import build_dali_train_loader

            return build_dali_train_loader(self.cfg, items, rank, world_size)
        return transforms.build_train_loader(self.cfg, items, rank, world_size)

    def eval(self, items: Sequence[Item]) -> Iterable[dict]:
        """Every item once, in order, without augmentation, ``data.eval_batch_size`` at a time."""
        if self.dali:
            from fba.data.dali import build_dali_eval_loader

            return build_dali_eval_loader(self.cfg, items)
        return transforms.build_eval_loader(self.cfg, items)
