"""Retrieval by the foreground captions alone, with no model: a TF-IDF bag of words per image, cosine distance.

It answers one question the model's numbers cannot: how well do the captions by themselves tell the people
apart? With captions written from the truth (``fba synth`` at caption noise 0) they name each identity's
clothes, so this baseline is already strong; with a realistic captioner's mistakes it is much weaker. The demo
reports it beside the model's features so that a gain of the caption-using features can be read against it.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from fba.retrieval.metrics import RetrievalMetrics
from fba.retrieval import score_features

_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


def bag_of_words(texts: Sequence[str]) -> np.ndarray:
    """L2-normalised TF-IDF rows [len(texts), vocabulary] (smooth idf, as scikit-learn's default)."""
    tokens = [_WORD.findall(text.lower()) for text in texts]
    vocabulary = {word: i for i, word in enumerate(sorted({w for words in tokens for w in words}))}
    counts = np.zeros((len(texts), max(1, len(vocabulary))), np.float32)
    for row, words in enumerate(tokens):
        for word in words:
            counts[row, vocabulary[word]] += 1
    document_frequency = (counts > 0).sum(axis=0)
    idf = np.log((1 + len(texts)) / (1 + document_frequency)) + 1
    weighted = counts * idf.astype(np.float32)
    return weighted / np.maximum(np.linalg.norm(weighted, axis=1, keepdims=True), 1e-12)


def caption_only_metrics(dataset, store, max_rank: int = 50) -> RetrievalMetrics:
    """Market-protocol metrics of query/gallery ranked by their fg captions' bag of words (cosine)."""
    query, gallery = dataset.split("query"), dataset.split("gallery")
    texts = [store[dataset.relpath(path)].fg for path, _, _ in [*query, *gallery]]
    features = bag_of_words(texts)
    q_pids, g_pids = (np.array([pid for _, pid, _ in items]) for items in (query, gallery))
    q_cams, g_cams = (np.array([cam for _, _, cam in items]) for items in (query, gallery))
    return score_features(features[: len(query)], features[len(query):], q_pids, g_pids, q_cams, g_cams,
                          metric="cosine", max_rank=max_rank)
