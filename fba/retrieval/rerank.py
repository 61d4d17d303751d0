"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in memory bounded by blocks, not by (Q+G)^2.

:func:`fba.retrieval.metrics.re_rank` builds the joint [Q+G, Q+G] distance matrix. Yet the method reads only three things
from it: each item's ``max(k1 + 1, k2)`` nearest items (stable order), each row's largest distance (the
normalisation), and the distances of the few pairs inside the expanded k-reciprocal sets. So here:

1. one blockwise kNN pass over all pairs (:mod:`fba.retrieval.knn`) gives the neighbour lists and row maxima;
2. the sparse neighbourhood vectors V are built from those lists, with the pair distances recomputed from the
   features (:func:`fba.retrieval.metrics.neighbourhood_vectors`, shared with the in-memory path);
3. the re-ranked distances of a chunk of queries to the whole gallery, ``(1 - lambda) * jaccard + lambda *
   original``, are computed on demand and handed to the streaming evaluation gallery block by gallery block.

Memory: the features (N x D), O(N * k1^2) for the neighbour sets and V, and one query chunk x gallery.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fba.retrieval.metrics import (
    _inverted_index, _jaccard_rows, block_distance, neighbourhood_vectors, pair_distance, prepare,
)
from fba.retrieval.knn import BlockKnn, JointRows
from fba.retrieval.rows import check_metric, check_source, compute_dtype, num_rows, read_rows, source_device

PAIR_CHUNK = 16384
DEFAULT_QUERY_BLOCK = 128


class RerankedDistances:
    """Re-ranked query x gallery distances as blocks for :func:`fba.retrieval.streamed.evaluate_blocks`.

    Numbers as ``re_rank(pairwise_distance(qf, gf), pairwise_distance(qf, qf), pairwise_distance(gf, gf), k1,
    k2, lambda_value)`` with ``precision="float64"`` (the in-memory arithmetic); the block ``(q0, q1)`` rows
    are computed once for all their gallery blocks.
    """

    def __init__(self, qf: Any, gf: Any, metric: str = "cosine", k1: int = 20, k2: int = 6,
                 lambda_value: float = 0.3, block: int = 4096, precision: str = "float64", progress: bool = True,
                 device: torch.device | str | None = None):
        check_metric(metric)
        dim = check_source("query features", qf)
        check_source("gallery features", gf, dim)
        if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
            raise ValueError(f"need k1 >= 1, k2 >= 1 and 0 <= lambda_value <= 1, got {k1}, {k2}, {lambda_value}")
        self.qf, self.gf, self.metric, self.lambda_value, self.block_size = qf, gf, metric, lambda_value, block
        self.dtype = compute_dtype(precision)
        self.device = torch.device(device) if device is not None else source_device(qf, gf)
        self.num_query, self.num_gallery = num_rows(qf), num_rows(gf)
        self.rows = JointRows(qf, gf)
        self.num = self.num_query + self.num_gallery
        knn = BlockKnn(self.rows, self._prepare, self._squared, block, self.device)
        neighbours = knn.run(max(k1 + 1, k2), transform=lambda keys, row_max: keys / row_max, progress=progress,
                             desc="re-ranking neighbours")
        self.row_max = neighbours.row_max.astype(np.float32)
        self.recomputed_rows = neighbours.recomputed_rows
        self.vectors = neighbourhood_vectors(self._pair_dist, neighbours.index, k1, k2)
        self.inverted = _inverted_index(*self.vectors, self.num)
        self._cached: tuple[tuple[int, int], torch.Tensor] | None = None

    def _prepare(self, rows: torch.Tensor):
        return prepare(rows, self.metric, self.dtype)

    def _squared(self, a, b) -> torch.Tensor:
        dist = block_distance(a, b, self.metric, torch.float32)
        return dist * dist

    def _pair_dist(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Squared, row-normalised distances of the pairs ``(rows[i], cols[i])``, from the features."""
        out = np.empty(len(rows), dtype=np.float32)
        for start in range(0, len(rows), PAIR_CHUNK):
            r, c = rows[start:start + PAIR_CHUNK], cols[start:start + PAIR_CHUNK]
            dist = pair_distance(self._prepare(self.rows.take(r, self.device)),
                                 self._prepare(self.rows.take(c, self.device)), self.metric, torch.float32)
            out[start:start + len(r)] = (dist * dist).cpu().numpy()
        return out / self.row_max[rows]

    def _query_rows(self, q0: int, q1: int) -> torch.Tensor:
        """Re-ranked distances of queries ``q0:q1`` to the whole gallery, float32 [q1 - q0, G]."""
        jaccard = _jaccard_rows(*self.vectors, self.inverted, self.num, slice(q0, q1))[:, self.num_query:]
        original = np.empty_like(jaccard)
        query = self._prepare(read_rows(self.qf, q0, q1, self.device))
        scale = self.row_max[q0:q1, None]
        for g0 in range(0, self.num_gallery, self.block_size):
            g1 = min(g0 + self.block_size, self.num_gallery)
            dist = block_distance(query, self._prepare(read_rows(self.gf, g0, g1, self.device)), self.metric,
                                  torch.float32).cpu().numpy()
            original[:, g0:g1] = np.square(dist) / scale
        return torch.from_numpy(jaccard * (1 - self.lambda_value) + original * self.lambda_value)

    def block(self, q0: int, q1: int, g0: int, g1: int) -> torch.Tensor:
        if self._cached is None or self._cached[0] != (q0, q1):
            self._cached = ((q0, q1), self._query_rows(q0, q1))
        return self._cached[1][:, g0:g1]

    def matrix(self, query_block: int = DEFAULT_QUERY_BLOCK) -> np.ndarray:
        """The whole re-ranked [Q, G] matrix (for checks on sets small enough to hold it)."""
        return np.concatenate([self._query_rows(q0, min(q0 + query_block, self.num_query)).numpy()
                               for q0 in range(0, self.num_query, query_block)])
