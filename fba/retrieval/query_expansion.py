"""Average query expansion (fast-reid's ``aqe``): every query and gallery feature is replaced by the mean of its
``k`` most similar features (itself included, cosine similarity over query and gallery together), each weighted
by its similarity to the power ``alpha``.

fast-reid forms the whole (Q+G)^2 similarity matrix; here the neighbours come from the blockwise kNN
(:mod:`fba.retrieval.knn`), so memory is the features plus one block, and ties go to the smaller index (fast-reid's
``argpartition`` leaves them unspecified). The same function serves the in-memory and the streaming path.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fba.retrieval.knn import BlockKnn, JointRows
from fba.retrieval.metrics import prepare
from fba.retrieval.rows import check_source, compute_dtype, source_device

DEFAULT_K = 5
DEFAULT_ALPHA = 3.0
ROWS_PER_CHUNK = 1024


def average_query_expansion(
    qf: Any, gf: Any, k: int = DEFAULT_K, alpha: float = DEFAULT_ALPHA, block: int = 4096,
    precision: str = "float32", progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The expanded ``(query, gallery)`` features, float32 NumPy arrays of the input shapes."""
    dim = check_source("query features", qf)
    check_source("gallery features", gf, dim)
    if k < 1:
        raise ValueError(f"query expansion needs k >= 1, got {k}")
    dtype = compute_dtype(precision)
    device = source_device(qf, gf)
    rows = JointRows(qf, gf)

    def unit(block_rows: torch.Tensor) -> torch.Tensor:
        return prepare(block_rows, "cosine", dtype)[0]

    def negative_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return -(a @ b.T).float()

    knn = BlockKnn(rows, unit, negative_similarity, block, device)
    index = knn.run(k, transform=lambda keys, _: keys, progress=progress, desc="query expansion").index
    expanded = np.empty(rows.shape, dtype=np.float32)
    for start in range(0, rows.shape[0], ROWS_PER_CHUNK):
        stop = min(start + ROWS_PER_CHUNK, rows.shape[0])
        neighbours = index[start:stop]
        features = rows.take(neighbours.ravel(), device).reshape(*neighbours.shape, dim)
        own = unit(rows.rows(start, stop, device))
        similarity = torch.einsum("nd,nkd->nk", own, unit(features.reshape(-1, dim)).reshape(features.shape))
        weights = similarity.float().pow(alpha)
        expanded[start:stop] = (features.float() * weights[:, :, None]).mean(1).cpu().numpy()
    split = rows.split
    return expanded[:split], expanded[split:]
