"""Retrieval: everything between feature rows and the metrics a re-identification paper reports.

- :mod:`~fba.retrieval.metrics`: :class:`RetrievalMetrics`; the distance arithmetic (float64 with products on the
  float32 grid, and its float32 twin with an error bound); mAP / CMC / mINP under the Market/Duke protocol (NumPy
  and ``fba._C``); in-memory k-reciprocal re-ranking;
- :mod:`~fba.retrieval.rows`: feature rows read block by block from arrays, memory maps, tensors or generators;
- :mod:`~fba.retrieval.streamed`: exact mAP / CMC / mINP from gallery blocks, never the whole Q x G matrix;
- :mod:`~fba.retrieval.knn`, :mod:`~fba.retrieval.rerank`, :mod:`~fba.retrieval.query_expansion`: blockwise exact
  neighbours, bounded re-ranking, average query expansion;
- :mod:`~fba.retrieval.score`: the one evaluation of features, in memory or streamed above a size threshold;
- :mod:`~fba.retrieval.features_file`: :class:`FeatureSet` and the features files ``fba embed`` writes;
- :mod:`~fba.retrieval.eval_set`: a data set's query and gallery embedded by a model (:class:`RetrievalEval`);
- :mod:`~fba.retrieval.command`: the work of ``fba eval``.

docs/retrieval.md explains the streamed and bounded paths. The names below are the package's API; the two modules
that embed with a model (``eval_set``, ``command``) are imported only where used.
"""
from __future__ import annotations

from fba.retrieval.features_file import FeatureSet, load_features, save_feature_set, save_features
from fba.retrieval.metrics import RetrievalMetrics, evaluate, pairwise_distance, re_rank
from fba.retrieval.query_expansion import average_query_expansion
from fba.retrieval.rerank import RerankedDistances
from fba.retrieval.score import score_feature_set, score_features
from fba.retrieval.streamed import FeatureDistances, evaluate_blocks, evaluate_streaming

__all__ = [
    "FeatureDistances", "FeatureSet", "RerankedDistances", "RetrievalMetrics", "average_query_expansion", "evaluate",
    "evaluate_blocks", "evaluate_streaming", "load_features", "pairwise_distance", "re_rank", "save_feature_set",
    "save_features", "score_feature_set", "score_features",
]
