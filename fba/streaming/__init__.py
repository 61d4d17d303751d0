"""Retrieval at scale: evaluation, re-ranking and query expansion in gallery blocks, never the whole
query x gallery (or (Q+G)^2) matrix at once (docs/retrieval.md).

- :mod:`fba.streaming.rows`: reading feature rows block by block from arrays, memory maps, tensors or generators,
  and the distances of one block (the arithmetic of :func:`fba.metrics.pairwise_distance`);
- :mod:`fba.streaming.evaluate`: exact mAP / CMC / mINP from distance blocks;
- :mod:`fba.streaming.knn`: blockwise exact k-nearest neighbours;
- :mod:`fba.streaming.rerank`: k-reciprocal re-ranking from kNN lists and sparse neighbourhood vectors;
- :mod:`fba.streaming.query_expansion`: average query expansion (fast-reid's ``aqe``);
- :mod:`fba.streaming.score`: the one entry point, in memory for small sets and streamed above a threshold.
"""
from __future__ import annotations

from fba.streaming.evaluate import FeatureDistances, evaluate_blocks, evaluate_streaming
from fba.streaming.query_expansion import average_query_expansion
from fba.streaming.rerank import RerankedDistances
from fba.streaming.score import score_features

__all__ = [
    "FeatureDistances", "RerankedDistances", "average_query_expansion", "evaluate_blocks", "evaluate_streaming",
    "score_features",
]
