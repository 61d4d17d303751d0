"""Re-identification metrics: distances, mAP / CMC / mINP under the Market/Duke protocol, k-reciprocal re-ranking.

Ranking is split in two steps so that the NumPy reference and the C++ fast path (``fba._C``) can be compared
number for number: a backend turns the distance matrix into per-query results (AP, INP, rank of the first true
match), and one shared function averages them. Both backends use the same tie rule: gallery items at equal
distance keep their gallery order (a stable sort by ``(distance, gallery index)``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fba.data.datasets import JUNK_PID
from fba.errors import InputError

_BACKENDS = ("auto", "numpy", "cpp")
PairDistance = Callable[[np.ndarray, np.ndarray], np.ndarray]
_ROWS_PER_CHUNK = 256
DISTANCES = ("cosine", "euclidean")


@dataclass(frozen=True)
class RetrievalMetrics:
    """What one evaluation measured: mAP, CMC and mINP as fractions, and what they were measured on.

    ``cmc[k]`` is the share of valid queries whose first true match is within the top ``k + 1``. ``feature``
    (``"full"``, ``"image"`` or the demo's ``"text"``), ``metric`` (the distance) and ``rerank`` say how, where
    known.
    """

    mAP: float
    cmc: np.ndarray
    mINP: float
    num_valid_queries: int
    num_query: int
    num_gallery: int
    feature: str | None = None
    metric: str | None = None
    rerank: bool = False
    aqe: int = 0  # average query expansion's k; 0: off
    streaming: bool = False  # measured in gallery blocks (fba.retrieval)

    def __getitem__(self, name: str) -> Any:
        """Read a field by the name it has in ``fba eval --json`` (``metrics["mAP"]``); the fields are the API."""
        if name not in self.__dataclass_fields__:
            raise KeyError(name)
        return getattr(self, name)

    def percent(self) -> dict[str, float]:
        """As the field reports it: mAP, R1, R5, R10 (those within the CMC's length) and mINP, in percent.
        Logs, tables and summaries all read it from here."""
        record = {"mAP": 100.0 * self.mAP}
        record.update({f"R{k}": 100.0 * float(self.cmc[k - 1]) for k in (1, 5, 10) if k <= len(self.cmc)})
        record["mINP"] = 100.0 * self.mINP
        return record

    def replace(self, **changes: Any) -> RetrievalMetrics:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the CMC as a list); fields that are unknown (None) are left out."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["cmc"] = [float(v) for v in self.cmc]
        return {key: value for key, value in values.items() if value is not None}


def protocol_keep(pids: np.ndarray, camids: np.ndarray, q_pid: int, q_camid: int) -> np.ndarray:
    """Which gallery entries count for one query (docs/design.md#evaluation-protocol): not the same id in the same
    camera, not junk."""
    return ~(((pids == q_pid) & (camids == q_camid)) | (pids == JUNK_PID))


def as_numpy(array: Any) -> np.ndarray:
    """A NumPy view or copy of an array-like or a tensor on any device (bf16/fp16 tensors become float32)."""
    if hasattr(array, "detach"):
        array = array.detach()
        if array.is_floating_point() and array.element_size() < 4:
            array = array.float()
        array = array.cpu().numpy()
    return np.asarray(array)


def _cpp_ranking():
    try:
        from fba import _C
    except ImportError:
        return None
    return getattr(_C, "rank_metrics", None)


def cpp_available() -> bool:
    """Whether the compiled ranking of ``fba._C`` is importable (it is when the package was built)."""
    return _cpp_ranking() is not None


def _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids) -> tuple[np.ndarray, ...]:
    distmat = as_numpy(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D [num_query, num_gallery], got shape {distmat.shape}")
    if distmat.dtype not in (np.float32, np.float64):
        distmat = distmat.astype(np.float64)
    distmat = np.ascontiguousarray(distmat)
    num_query, num_gallery = distmat.shape
    ids = {}
    for name, values, expected in (
        ("q_pids", q_pids, num_query), ("g_pids", g_pids, num_gallery),
        ("q_camids", q_camids, num_query), ("g_camids", g_camids, num_gallery),
    ):
        values = as_numpy(values)
        if values.ndim != 1 or len(values) != expected:
            side = "query" if name.startswith("q") else "gallery"
            raise ValueError(
                f"{name} must be 1-D with one entry per {side} row ({expected} from distmat {distmat.shape}), "
                f"got shape {values.shape}"
            )
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} must hold integers, got dtype {values.dtype}")
        ids[name] = np.ascontiguousarray(values, dtype=np.int64)
    if np.isnan(distmat).any():
        raise ValueError("distmat holds NaN: the ranking would be undefined")
    return distmat, ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"]


def _rank_metrics_numpy(distmat, q_pids, g_pids, q_camids, g_camids) -> tuple[np.ndarray, ...]:
    """Per-query AP, INP and first-match rank, the torchreid/fast-reid way (``eval_market1501``).

    Returns ``(ap, inp, first_rank)``; a query without a valid match gets NaN, NaN, -1.
    """
    num_query = distmat.shape[0]
    ap = np.full(num_query, np.nan)
    inp = np.full(num_query, np.nan)
    first_rank = np.full(num_query, -1, dtype=np.int64)
    for start in range(0, num_query, _ROWS_PER_CHUNK):
        indices = np.argsort(distmat[start:start + _ROWS_PER_CHUNK], axis=1, kind="stable")
        for offset, order in enumerate(indices):
            q = start + offset
            pids, camids = g_pids[order], g_camids[order]
            keep = protocol_keep(pids, camids, q_pids[q], q_camids[q])
            raw_cmc = (pids[keep] == q_pids[q]).astype(np.int64)
            if not raw_cmc.any():
                continue
            positions = np.flatnonzero(raw_cmc)
            num_rel = len(positions)
            cumulative = raw_cmc.cumsum()
            precision = cumulative / np.arange(1.0, len(raw_cmc) + 1.0)
            ap[q] = (precision * raw_cmc).sum() / num_rel
            inp[q] = cumulative[positions[-1]] / (positions[-1] + 1.0)
            first_rank[q] = positions[0]
    return ap, inp, first_rank


def _rank_metrics_cpp(distmat, q_pids, g_pids, q_camids, g_camids) -> tuple[np.ndarray, ...]:
    rank_metrics = _cpp_ranking()
    if rank_metrics is None:
        raise RuntimeError("backend='cpp' needs the compiled extension fba._C (rebuild: pip install -e .)")
    return rank_metrics(distmat, q_pids, g_pids, q_camids, g_camids)


class NoValidQueryError(InputError):
    """No query has a true match in the gallery: the query/gallery split, not the model, is wrong."""


def _summarise(ap: np.ndarray, inp: np.ndarray, first_rank: np.ndarray, max_rank: int, num_gallery: int) -> RetrievalMetrics:
    valid = first_rank >= 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise NoValidQueryError(
            f"none of the {len(first_rank)} queries has a valid match in the gallery "
            "(same id on another camera, junk id -1 excluded): no metric can be computed"
        )
    hits = np.bincount(first_rank[valid], minlength=max_rank)[:max_rank]
    cmc = np.cumsum(hits) / num_valid
    return RetrievalMetrics(
        mAP=float(ap[valid].mean()), cmc=cmc, mINP=float(inp[valid].mean()), num_valid_queries=num_valid,
        num_query=len(first_rank), num_gallery=num_gallery,
    )


def evaluate(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    backend: str = "auto",
) -> RetrievalMetrics:
    """mAP, CMC and mINP under the Market/Duke protocol (docs/design.md#evaluation-protocol).

    For each query the gallery items with the query's id *and* camera are dropped, as are junk items (id -1);
    distractors (id 0) stay and count as wrong. Queries left without a true match are skipped and the others
    counted in ``num_valid_queries``. AP follows torchreid's ``eval_market1501``; INP (Ye et al., AGW) is
    ``num_rel / (rank of the last true match + 1)``. ``cmc[k]`` is the share of valid queries whose first true
    match is within the top ``k + 1``; it has ``max_rank`` entries even when the gallery is shorter.

    ``backend``: "numpy" (the reference), "cpp" (``fba._C``) or "auto" (C++ when built). Inputs may be NumPy
    arrays or tensors (any device); ``distmat`` is [num_query, num_gallery], float32 or float64.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    arrays = _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids)
    use_cpp = backend == "cpp" or (backend == "auto" and cpp_available())
    per_query = _rank_metrics_cpp(*arrays) if use_cpp else _rank_metrics_numpy(*arrays)
    return _summarise(*per_query, max_rank=max_rank, num_gallery=arrays[0].shape[1])


def _writeable(array: np.ndarray) -> np.ndarray:
    """A read-only array (a memory-mapped features file) copied, as torch wants writeable memory."""
    return array if array.flags.writeable else np.array(array)


def prepare(rows: torch.Tensor, metric: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows in the compute dtype, unit length for cosine; for euclidean also their squared norms."""
    rows = rows.to(dtype)
    if metric == "cosine":
        return torch.nn.functional.normalize(rows, dim=1), None
    return rows, (rows * rows).sum(1)


def on_float32_grid(values: torch.Tensor) -> torch.Tensor:
    """Products rounded to float32 (in their own dtype). Two products equal in exact arithmetic differ in float64
    only by a few units of 2^-53, whatever the matrix shape that summed them; rounded to float32 they are equal,
    unless they fall on two sides of a float32 rounding boundary (odds about 2^-29 per pair), and exactly equal
    where the exact value is a float32 (integer features, a row against itself). Ties are then ties."""
    return values.to(torch.float32).to(values.dtype) if values.dtype == torch.float64 else values


def _distance(dot: torch.Tensor, q_sq: torch.Tensor | None, g_sq: torch.Tensor | None, metric: str,
              out_dtype: torch.dtype) -> torch.Tensor:
    dot = on_float32_grid(dot)
    if metric == "cosine":
        return dot.neg_().add_(1.0).to(out_dtype)  # 1 - cos, in place: the same rounding as ``1.0 - dot``
    return (on_float32_grid(q_sq) + on_float32_grid(g_sq) - 2.0 * dot).clamp_min_(0.0).sqrt_().to(out_dtype)


def block_distance(
    q: tuple[torch.Tensor, torch.Tensor | None], g: tuple[torch.Tensor, torch.Tensor | None], metric: str,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Distances [n, m] between prepared query rows and prepared gallery rows, the arithmetic of
    :func:`fba.retrieval.metrics.pairwise_distance`: ``1 - cos``, or ``|q|^2 + |g|^2 - 2 q.g`` clamped then rooted, from
    products on the float32 grid (:func:`on_float32_grid`)."""
    (q_rows, q_sq), (g_rows, g_sq) = q, g
    euclidean = metric != "cosine"
    return _distance(q_rows @ g_rows.T, q_sq[:, None] if euclidean else None, g_sq if euclidean else None, metric,
                     out_dtype)


def pair_distance(
    q: tuple[torch.Tensor, torch.Tensor | None], g: tuple[torch.Tensor, torch.Tensor | None], metric: str,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Distances [k] between row i of prepared query rows and row i of prepared gallery rows: the arithmetic of
    :func:`block_distance`, one pair at a time."""
    (q_rows, q_sq), (g_rows, g_sq) = q, g
    return _distance((q_rows * g_rows).sum(1), q_sq, g_sq, metric, out_dtype)


UNIT_ROUNDOFF = 2.0 ** -24  # float32


class coarse_float32:
    """``torch.float32`` matmuls in IEEE float32 inside the block (no TF32 or bf16 passes), whatever the caller's
    ``torch.set_float32_matmul_precision``: the error bound of :func:`coarse_block` assumes it."""

    def __enter__(self):
        self.saved = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")

    def __exit__(self, *exc):
        torch.set_float32_matmul_precision(self.saved)


def prepare_coarse(rows: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows for :func:`coarse_block`: normalised (cosine) or squared norms taken (euclidean) in float64, then
    float32, so only the float32 matmul's own rounding separates its products from the float64 ones."""
    rows, sq = prepare(rows, metric, torch.float64)
    return rows.float(), None if sq is None else sq.float()


def coarse_block(
    q: tuple[torch.Tensor, torch.Tensor | None], g: tuple[torch.Tensor, torch.Tensor | None], metric: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A float32 matmul's view of a block, at about twice the float64 speed: ``(values [n, m], margin [n])``
    with every value within ``margin`` of the exact distance (cosine) or squared distance (euclidean) of
    :func:`block_distance`.

    The margin is the standard bound of a K-term float32 dot product, ``K u sum|q_i g_i| <= K u |q| |g|``
    (u = 2^-24, Higham's gamma_K), with 25% for gamma's higher-order terms and fused adds, plus the float32
    roundings of the inputs, the sums and the exact path's float32 grid (16 u); ``|q||g| <= 1`` for unit rows and
    ``<= (|q|^2 + |g|^2) / 2`` otherwise."""
    (q_rows, q_sq), (g_rows, g_sq) = q, g
    k = q_rows.shape[1]
    with coarse_float32():
        dot = q_rows @ g_rows.T
    factor = (1.25 * k + 16) * UNIT_ROUNDOFF
    if metric == "cosine":
        values = dot.neg_().add_(1.0)
        return values, torch.full((len(values),), factor, dtype=values.dtype, device=values.device)
    values = dot.mul_(-2.0).add_(q_sq[:, None]).add_(g_sq)
    scale = q_sq + (g_sq.max() if len(g_sq) else 0.0)
    return values, factor * scale


def coarse_thresholds(distances: torch.Tensor, metric: str) -> torch.Tensor:
    """Exact distances on the scale of :func:`coarse_block`'s values (squared for euclidean), in float32."""
    distances = distances.double()
    return (distances if metric == "cosine" else distances * distances).float()


def pairwise_distance(qf: Any, gf: Any, metric: str = "euclidean", chunk_size: int = 1024) -> np.ndarray:
    """Distance matrix [num_query, num_gallery] between two feature sets (NumPy arrays or tensors).

    "euclidean" is the true L2 distance (square root of the clamped expansion ``|q|^2 + |g|^2 - 2 q.g``);
    "cosine" is ``1 - cos``. The arithmetic is float64 on the query tensor's device (so GPU features stay on the
    GPU), with the products rounded to float32 before they are combined, so distances equal in exact arithmetic
    (duplicate or parallel rows) come out equal (:func:`on_float32_grid`); ``chunk_size``
    query rows at a time keep the temporaries small. The result is a NumPy array, float32 unless both inputs
    are float64.
    """
    if metric not in DISTANCES:
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    q = qf.detach() if torch.is_tensor(qf) else torch.from_numpy(_writeable(as_numpy(qf)))
    g = (gf.detach() if torch.is_tensor(gf) else torch.from_numpy(_writeable(as_numpy(gf)))).to(q.device)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"features must be [N, D] with the same D, got query {tuple(q.shape)} and gallery {tuple(g.shape)}")
    out_dtype = torch.float64 if (q.dtype == torch.float64 and g.dtype == torch.float64) else torch.float32
    gallery = prepare(g, metric, torch.float64)
    out = torch.empty(q.shape[0], g.shape[0], dtype=out_dtype)
    for start in range(0, q.shape[0], chunk_size):
        query = prepare(q[start:start + chunk_size], metric, torch.float64)
        out[start:start + chunk_size] = block_distance(query, gallery, metric, out_dtype).cpu()
    return out.numpy()


def _topk_stable(dist: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` columns of ``argsort(dist, axis=1, kind="stable")``, without sorting whole rows.

    ``np.partition`` finds each row's k-th value; everything below it is taken, and among the values equal to it
    the lowest column indices, which is exactly what a stable sort keeps.
    """
    num_rows, num_cols = dist.shape
    k = min(k, num_cols)
    result = np.empty((num_rows, k), dtype=np.int64)
    for start in range(0, num_rows, _ROWS_PER_CHUNK):
        block = dist[start:start + _ROWS_PER_CHUNK]
        kth = np.partition(block, k - 1, axis=1)[:, k - 1:k]
        below = block < kth
        equal = block == kth
        room = k - below.sum(1, keepdims=True)
        chosen = below | (equal & (np.cumsum(equal, axis=1) <= room))
        columns = np.nonzero(chosen)[1].reshape(len(block), k)
        values = np.take_along_axis(block, columns, axis=1)
        result[start:start + len(block)] = np.take_along_axis(columns, np.argsort(values, axis=1, kind="stable"), axis=1)
    return result


def _reciprocal(neighbours: np.ndarray) -> np.ndarray:
    """mask[i, a]: ``i`` is among the neighbours of its own a-th neighbour (k-reciprocal membership)."""
    rows = np.arange(len(neighbours))[:, None, None]
    return (neighbours[neighbours] == rows).any(axis=2)


def _expanded_weights(pair_dist: PairDistance, rank: np.ndarray, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of V before query expansion: Gaussian weights over each item's expanded k-reciprocal set.

    ``pair_dist(rows, cols)`` gives the (squared, row-normalised) distances of those pairs: read from the joint
    matrix in memory, or computed from the features by the bounded re-ranking (fba.retrieval.rerank).
    Returned padded as ``(columns, weights)`` [N, L], columns ascending; padding has column N and weight 0.
    """
    num = len(rank)
    forward = rank[:, : k1 + 1]
    half = rank[:, : int(np.around(k1 / 2.0)) + 1]
    recip = _reciprocal(forward)
    half_recip = _reciprocal(half)
    half_size = half_recip.sum(1)
    width = forward.shape[1] * (1 + half.shape[1])
    columns = np.full((num, width), num, dtype=np.int64)
    weights = np.zeros((num, width), dtype=np.float32)
    for start in range(0, num, _ROWS_PER_CHUNK):
        f, r = forward[start:start + _ROWS_PER_CHUNK], recip[start:start + _ROWS_PER_CHUNK]
        members = np.where(r, f, -1)
        candidates = np.where(half_recip[f], half[f], -2)
        overlap = (candidates[:, :, :, None] == members[:, None, None, :]).any(axis=3).sum(axis=2)
        accept = r & (overlap > 2.0 / 3.0 * half_size[f])
        accepted = np.where(accept[:, :, None], candidates, -1).reshape(len(f), -1)
        expanded = np.concatenate([members, accepted], axis=1)
        in_set = np.zeros((len(f), num + 1), dtype=bool)
        in_set[np.arange(len(f))[:, None], np.where(expanded >= 0, expanded, num)] = True
        in_set[:, num] = False
        counts = in_set.sum(1)
        row_ids, cols = np.nonzero(in_set)
        slots = np.arange(len(cols)) - np.repeat(np.cumsum(counts) - counts, counts)
        block_weights = np.zeros((len(f), width), dtype=np.float32)
        block_weights[row_ids, slots] = np.exp(-pair_dist(start + row_ids, cols))
        block_weights /= block_weights.sum(1, keepdims=True)
        columns[start + row_ids, slots] = cols
        weights[start:start + len(f)] = block_weights
    return columns, weights


def _query_expanded(columns: np.ndarray, weights: np.ndarray, rank: np.ndarray, k2: int) -> tuple[np.ndarray, ...]:
    """Non-zeros of V after query expansion (each row the mean of its k2 nearest rows), as COO, row-major.

    With fewer than k2 images the mean is over all of them, as the reference's ``initial_rank[i, :k2]`` is then
    the shorter list; ``rank`` already holds at most that many columns.
    """
    num = len(columns)
    k2 = min(k2, rank.shape[1])
    rows_out, cols_out, vals_out = [], [], []
    for start in range(0, num, _ROWS_PER_CHUNK):
        block_rows = np.arange(start, min(start + _ROWS_PER_CHUNK, num))
        dense = np.zeros((len(block_rows), num + 1), dtype=np.float32)
        for t in range(k2):
            neighbour = rank[block_rows, t]
            dense[np.arange(len(block_rows))[:, None], columns[neighbour]] += weights[neighbour]
        dense = dense[:, :num] / np.float32(k2)
        r, c = np.nonzero(dense)
        rows_out.append(r + start)
        cols_out.append(c)
        vals_out.append(dense[r, c])
    return np.concatenate(rows_out), np.concatenate(cols_out), np.concatenate(vals_out)


def neighbourhood_vectors(pair_dist: PairDistance, rank: np.ndarray, k1: int, k2: int) -> tuple[np.ndarray, ...]:
    """The sparse k-reciprocal neighbourhood vectors V (after query expansion over ``k2``) as row-major COO
    ``(rows, cols, vals)``, from the stable neighbour lists ``rank`` [N, >= max(k1 + 1, k2) or N] and the pair
    distances. Needs O(N * k1^2) memory, never N^2."""
    columns, weights = _expanded_weights(pair_dist, rank, k1)
    if k2 > 1:
        return _query_expanded(columns, weights, rank, k2)
    rows, slots = np.nonzero(columns < len(rank))
    return rows, columns[rows, slots], weights[rows, slots]


def _inverted_index(rows, cols, vals, num: int) -> tuple[np.ndarray, ...]:
    """The non-zeros of V grouped by column: ``(column_rows, column_values, column_start, column_length)``."""
    order = np.argsort(cols, kind="stable")
    col_len = np.bincount(cols, minlength=num)
    return rows[order], vals[order], np.cumsum(col_len) - col_len, col_len


def _jaccard_rows(rows, cols, vals, inverted, num: int, query_rows: slice) -> np.ndarray:
    """Jaccard distance of the query rows to all rows: ``1 - m / (2 - m)``, ``m = sum_k min(V_ik, V_jk)``.

    Only columns where both rows are non-zero contribute, so each non-zero of a query row is paired with the
    non-zeros of its column (the inverted index), and the minima are summed per (query, row) pair.
    """
    col_rows, col_vals, col_start, col_len = inverted
    begin, end = np.searchsorted(rows, [query_rows.start, query_rows.stop])
    q_rows, q_cols, q_vals = rows[begin:end], cols[begin:end], vals[begin:end]
    lens = col_len[q_cols]
    offsets = np.cumsum(lens) - lens
    pos = np.repeat(col_start[q_cols] - offsets, lens) + np.arange(lens.sum())
    minima = np.minimum(np.repeat(q_vals, lens), col_vals[pos])
    flat = (np.repeat(q_rows, lens) - query_rows.start) * num + col_rows[pos]
    size = query_rows.stop - query_rows.start
    shared = np.bincount(flat, weights=minima, minlength=size * num).reshape(size, num)
    return (1.0 - shared / (2.0 - shared)).astype(np.float32)


def re_rank(q_g: Any, q_q: Any, g_g: Any, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017), the TransReID/torchreid ``re_ranking`` vectorised.

    Takes the query-gallery, query-query and gallery-gallery distances and returns the re-ranked [Q, G]
    float32 distances: ``(1 - lambda) * jaccard + lambda * original``, the original being squared and
    normalised per row as in the reference. Neighbour lists use the stable tie rule (gallery order).

    Memory: O((Q+G)^2) -- the joint [Q+G, Q+G] float32 distance matrix (1.5 GB for Market-1501, 19,281
    images), plus O((Q+G) * k1^2) for the neighbour sets and the sparse V; everything else is chunked.
    """
    q_g, q_q, g_g = as_numpy(q_g), as_numpy(q_q), as_numpy(g_g)
    if q_g.ndim != 2:
        raise ValueError(f"q_g must be 2-D [num_query, num_gallery], got shape {q_g.shape}")
    num_query, num_gallery = q_g.shape
    if q_q.shape != (num_query, num_query) or g_g.shape != (num_gallery, num_gallery):
        raise ValueError(
            f"q_q must be [{num_query}, {num_query}] and g_g [{num_gallery}, {num_gallery}] to match q_g "
            f"{q_g.shape}, got {q_q.shape} and {g_g.shape}"
        )
    if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"need k1 >= 1, k2 >= 1 and 0 <= lambda_value <= 1, got {k1}, {k2}, {lambda_value}")
    num = num_query + num_gallery
    dist = np.empty((num, num), dtype=np.float32)
    dist[:num_query, :num_query] = q_q.T
    dist[:num_query, num_query:] = q_g
    dist[num_query:, :num_query] = q_g.T
    dist[num_query:, num_query:] = g_g.T
    np.square(dist, out=dist)
    dist /= dist.max(axis=1, keepdims=True)

    rank = _topk_stable(dist, max(k1 + 1, k2))
    rows, cols, vals = neighbourhood_vectors(lambda r, c: dist[r, c], rank, k1, k2)
    inverted = _inverted_index(rows, cols, vals, num)
    final = np.empty((num_query, num_gallery), dtype=np.float32)
    block = 64
    for start in range(0, num_query, block):
        stop = min(start + block, num_query)
        jaccard = _jaccard_rows(rows, cols, vals, inverted, num, slice(start, stop))[:, num_query:]
        final[start:stop] = jaccard * (1 - lambda_value) + dist[start:stop, num_query:] * lambda_value
    return final
