"""The retrieval layer: a data set's query and gallery embedded into a :class:`FeatureSet`, and a feature set
scored into :class:`~fba.retrieval.metrics.RetrievalMetrics` (docs/design.md#evaluation-protocol).

One path for every evaluation: the trainer's periodic one, ``fba eval --checkpoint``, ``fba eval --features``
(a saved :class:`FeatureSet` scored by :func:`score`), the demo and the ablation. The feature follows
``eval.feature``: "full" (post-BN CLS, F_f^V, F_f^T, with the captions) or "image" (post-BN CLS only).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from fba.config import Config
from fba.data.captions import CaptionStore
from fba.data.datasets import ReIDDataset
from fba.data.loaders import Loaders
from fba.embed.embedder import Embedder
from fba.retrieval.features_file import FeatureSet
from fba.embed.text_bank import TextBank
from fba.retrieval.metrics import RetrievalMetrics
from fba.retrieval.score import score_feature_set as score

SPLITS = ("query", "gallery")


class RetrievalEval:
    """Query and gallery of a data set with their text inputs: :meth:`embed` gives a :class:`FeatureSet`,
    :meth:`score` its metrics, :meth:`run` both.

    ``loaders`` (default: chosen for the embedder's device on first use) reads the images, so a trainer
    evaluates with the loader kind it trains with.
    """

    def __init__(self, cfg: Config, dataset: ReIDDataset, query_bank: TextBank | None = None,
                 gallery_bank: TextBank | None = None, loaders: Loaders | None = None):
        self.cfg = cfg
        self.dataset = dataset
        self.banks = {"query": query_bank, "gallery": gallery_bank}
        self.loaders = loaders

    @classmethod
    def for_model(cls, cfg: Config, model: nn.Module, dataset: ReIDDataset, store: CaptionStore | None,
                  device: torch.device, loaders: Loaders | None = None) -> RetrievalEval:
        """With the query and gallery captions of ``store`` encoded by ``model``'s text tower when the full
        feature is asked for and the model has a cross-modal module (else image-only, no text work)."""
        banks = {"query": None, "gallery": None}
        if cfg.eval.feature == "full" and store is not None and model.cross_modal is not None:
            banks = {split: TextBank.for_split(model, dataset, split, store, device) for split in banks}
        return cls(cfg, dataset, banks["query"], banks["gallery"], loaders)

    def embed(self, embedder: Embedder, progress: bool = True) -> FeatureSet:
        """The query rows, then the gallery rows, with their paths, ids, cameras, split and ``meta["feature"]``."""
        full = self.cfg.eval.feature == "full" and embedder.uses_captions
        loaders = self.loaders or Loaders.for_device(self.cfg, embedder.device)
        rows = []
        for split in SPLITS:
            items = self.dataset.split(split)
            bank = self.banks[split] if full else None
            if full and bank is None:
                raise ValueError(f"eval.feature=full needs the {split} captions")
            rows.append(embedder.embed_loader(loaders.eval(items), bank, total=len(items), desc=f"embed {split}",
                                              progress=progress))
        items = [item for split in SPLITS for item in self.dataset.split(split)]
        return FeatureSet(
            features=torch.cat(rows).numpy(),
            paths=[str(path) for path, _, _ in items],
            pids=np.array([pid for _, pid, _ in items], dtype=np.int64),
            camids=np.array([cam for _, _, cam in items], dtype=np.int64),
            split=[split for split in SPLITS for _ in self.dataset.split(split)],
            meta={"feature": "full" if full else "image"},
        )

    def score(self, features: FeatureSet, metric: str = "cosine", rerank: bool | None = None) -> RetrievalMetrics:
        """The metrics of features from :meth:`embed` (``rerank`` None: the config's ``eval.rerank``)."""
        rerank = self.cfg.eval.rerank if rerank is None else rerank
        return score(features, metric, rerank, self.cfg.eval.max_rank)

    def run(self, embedder: Embedder, progress: bool = True, metric: str = "cosine",
            rerank: bool | None = None) -> RetrievalMetrics:
        return self.score(self.embed(embedder, progress), metric, rerank)


def with_feature(cfg: Config, feature: str) -> Config:
    """``cfg`` measuring ``feature`` ("full" or "image") instead of its own ``eval.feature``."""
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, feature=feature))
