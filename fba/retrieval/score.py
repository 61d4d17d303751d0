"""One entry point for scoring features: the in-memory path for small sets, the streaming path above a size
threshold, with optional average query expansion and k-reciprocal re-ranking in either (docs/retrieval.md).

Both paths give the same numbers: the streaming ranking is exact and the bounded re-ranking reproduces
:func:`fba.retrieval.metrics.re_rank`; the threshold only decides what fits in memory.
"""
from __future__ import annotations

from typing import Any

from fba.retrieval.features_file import FeatureSet, FeaturesFileError
from fba.retrieval.metrics import RetrievalMetrics, evaluate, pairwise_distance, re_rank
from fba.retrieval.streamed import DEFAULT_GALLERY_BLOCK, DEFAULT_QUERY_BLOCK, FeatureDistances, evaluate_blocks
from fba.retrieval.query_expansion import DEFAULT_ALPHA, average_query_expansion
from fba.retrieval.rerank import DEFAULT_QUERY_BLOCK as RERANK_QUERY_BLOCK
from fba.retrieval.rerank import RerankedDistances
from fba.retrieval.rows import num_rows

STREAMING_MODES = ("auto", "on", "off")
# Above this many float32 distances (400 MB) "auto" streams: Q x G for plain evaluation, (Q + G)^2 with
# re-ranking, whose in-memory path holds the joint matrix (1.5 GB on Market-1501).
STREAMING_THRESHOLD = 100_000_000
RERANK_K1, RERANK_K2, RERANK_LAMBDA = 20, 6, 0.3  # docs/design.md#evaluation-protocol


def use_streaming(num_query: int, num_gallery: int, rerank: bool, mode: str = "auto") -> bool:
    if mode not in STREAMING_MODES:
        raise ValueError(f"streaming must be one of {STREAMING_MODES}, got {mode!r}")
    if mode != "auto":
        return mode == "on"
    held = (num_query + num_gallery) ** 2 if rerank else num_query * num_gallery
    return held > STREAMING_THRESHOLD


def score_features(
    qf: Any, gf: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any, metric: str = "cosine",
    rerank: bool = False, aqe: int = 0, aqe_alpha: float = DEFAULT_ALPHA, max_rank: int = 50,
    block: int = DEFAULT_GALLERY_BLOCK, streaming: str = "auto", progress: bool = False,
) -> RetrievalMetrics:
    """The one evaluation of query features against gallery features: distances, optional k-reciprocal
    re-ranking (docs/design.md#re-ranking) and query expansion, in memory or in gallery blocks; the
    :class:`~fba.retrieval.metrics.RetrievalMetrics` say how they were computed (``metric``, ``rerank``, ``aqe``,
    ``streaming``)."""
    num_query, num_gallery = num_rows(qf), num_rows(gf)
    stream = use_streaming(num_query, num_gallery, rerank, streaming)
    if aqe:
        qf, gf = average_query_expansion(qf, gf, k=aqe, alpha=aqe_alpha, block=block, progress=progress)
    ids = (q_pids, g_pids, q_camids, g_camids)
    if not stream:
        distmat = pairwise_distance(qf, gf, metric=metric)
        if rerank:
            distmat = re_rank(distmat, pairwise_distance(qf, qf, metric=metric),
                              pairwise_distance(gf, gf, metric=metric), RERANK_K1, RERANK_K2, RERANK_LAMBDA)
        metrics = evaluate(distmat, *ids, max_rank=max_rank)
    elif rerank:
        source = RerankedDistances(qf, gf, metric, RERANK_K1, RERANK_K2, RERANK_LAMBDA, block=block, progress=progress)
        metrics = evaluate_blocks(source, *ids, max_rank, gallery_block=block, query_block=RERANK_QUERY_BLOCK,
                                  progress=progress)
    else:
        metrics = evaluate_blocks(FeatureDistances(qf, gf, metric), *ids, max_rank, gallery_block=block,
                                  query_block=DEFAULT_QUERY_BLOCK, progress=progress)
    return metrics.replace(metric=metric, rerank=bool(rerank), aqe=int(aqe), streaming=stream, num_query=num_query,
                           num_gallery=num_gallery)


def query_gallery(features: FeatureSet, source: str = "the feature set") -> tuple[FeatureSet, FeatureSet]:
    """The query rows and the gallery rows; a set without ids, cameras or both splits cannot be scored."""
    missing = [name for name in ("split", "pids", "camids") if getattr(features, name) is None]
    if missing:
        raise FeaturesFileError(f"{source}: cannot evaluate, the file has no {', '.join(missing)} (needed per row)")
    query, gallery = features.select("query"), features.select("gallery")
    if len(query) == 0 or len(gallery) == 0:
        raise FeaturesFileError(f"{source}: needs rows with split 'query' and 'gallery', "
                                f"found splits {sorted(set(features.split))}")
    return query, gallery


def score_feature_set(features: FeatureSet, metric: str = "cosine", rerank: bool = False, max_rank: int = 50,
          source: str = "the feature set", **scale) -> RetrievalMetrics:
    """The metrics of a feature set's query rows against its gallery rows (``meta["feature"]`` names the feature);
    ``scale``: ``aqe``, ``aqe_alpha``, ``block``, ``streaming``, ``progress`` of
    :func:`fba.retrieval.score_features` (docs/retrieval.md)."""
    query, gallery = query_gallery(features, source)
    metrics = score_features(query.features, gallery.features, query.pids, gallery.pids, query.camids,
                             gallery.camids, metric=metric, rerank=rerank, max_rank=max_rank, **scale)
    return metrics.replace(feature=features.meta.get("feature"))
