"""Exact mAP, CMC and mINP from distance blocks: the whole query x gallery matrix is never held.

A query's metrics need only the rank of each of its true matches among the gallery items that count for it
(docs/design.md#evaluation-protocol: same id *and* camera dropped, junk id -1 dropped, distractors kept as wrong). That rank is the number
of kept wrong items closer than the match, or at the same distance with a smaller gallery index (the stable
order of :func:`fba.retrieval.metrics.evaluate`), plus the matches before it. So each query chunk is streamed twice:

1. the distances of the chunk's matches, pair by pair (few per query), sorted;
2. every block is bucketed against them: a histogram of wrong items per gap between consecutive matches, whose
   running sum is the count before each match. Exact ties with a match distance are settled by gallery index.

Features are bucketed from a float32 matmul (about twice as fast as float64 on a CPU) with a bound on its
error: an item whose error window holds no match distance is in the same bucket whatever its exact distance,
and the few others are recomputed pair by pair in the exact arithmetic (float64, products on the float32 grid:
:func:`fba.retrieval.metrics.on_float32_grid`). The result is the in-memory ranking of the same distances, the same
at every block size, and memory is bounded by ``query_block x gallery_block`` (plus a few numbers per true match).
"""
from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from fba.retrieval.metrics import (
    JUNK_PID, RetrievalMetrics, _summarise, as_numpy, block_distance, coarse_block, coarse_thresholds, pair_distance,
    prepare, prepare_coarse,
)
from fba.retrieval.rows import check_metric, check_source, num_rows, output_dtype, read_rows, source_device, take_rows

DEFAULT_GALLERY_BLOCK = 4096
DEFAULT_QUERY_BLOCK = 4096
BACKENDS = ("auto", "torch", "cpp")


def _compiled():
    try:
        from fba import _C
    except ImportError:
        return None
    return _C if hasattr(_C, "count_block") else None


_C = _compiled()


class DistanceBlocks(Protocol):
    """Distances of query rows ``q0:q1`` to gallery rows ``g0:g1`` on demand, bit for bit the same every call.

    A source may also offer ``pairs(q_index, g_index)`` (the exact distances of single pairs) and
    ``coarse(q0, q1, g0, g1) -> (values, margin)`` with ``thresholds(distances)`` (a fast block whose values are
    within ``margin`` of the exact ones, on the scale ``thresholds`` puts distances on); the ranking then asks
    for those instead of exact blocks."""

    num_query: int
    num_gallery: int

    def block(self, q0: int, q1: int, g0: int, g1: int) -> torch.Tensor: ...


class FeatureDistances:
    """Distance blocks computed from query and gallery features (any source of :mod:`fba.retrieval.rows`).

    Exact blocks and pairs are the in-memory path's arithmetic (:func:`fba.retrieval.metrics.pairwise_distance`: float64,
    products on the float32 grid); coarse blocks are a float32 matmul with its error bound, which the ranking
    refines pair by pair where the bound leaves a rank open. The query chunk last asked for is kept prepared.
    """

    def __init__(self, qf: Any, gf: Any, metric: str = "cosine", device: torch.device | str | None = None):
        check_metric(metric)
        dim = check_source("query features", qf)
        check_source("gallery features", gf, dim)
        self.qf, self.gf, self.metric = qf, gf, metric
        self.out_dtype = output_dtype(qf, gf)
        self.device = torch.device(device) if device is not None else source_device(qf, gf)
        self.num_query, self.num_gallery = num_rows(qf), num_rows(gf)
        self._query: dict[str, tuple[tuple[int, int], Any]] = {}
        self._gallery: tuple[int, int, torch.Tensor] | None = None

    def _prepared_query(self, q0: int, q1: int, coarse: bool):
        kind = "coarse" if coarse else "exact"
        if kind not in self._query or self._query[kind][0] != (q0, q1):
            rows = read_rows(self.qf, q0, q1, self.device)
            self._query[kind] = ((q0, q1), prepare_coarse(rows, self.metric) if coarse
                                 else prepare(rows, self.metric, torch.float64))
        return self._query[kind][1]

    def _gallery_rows(self, g0: int, g1: int) -> torch.Tensor:
        """Rows ``g0:g1`` as read for the last coarse block, so its unsure pairs are refined without a reread."""
        if self._gallery is None or self._gallery[:2] != (g0, g1):
            self._gallery = (g0, g1, read_rows(self.gf, g0, g1, self.device))
        return self._gallery[2]

    def block(self, q0: int, q1: int, g0: int, g1: int) -> torch.Tensor:
        gallery = prepare(read_rows(self.gf, g0, g1, self.device), self.metric, torch.float64)
        return block_distance(self._prepared_query(q0, q1, False), gallery, self.metric, self.out_dtype)

    def coarse(self, q0: int, q1: int, g0: int, g1: int) -> tuple[torch.Tensor, torch.Tensor]:
        gallery = prepare_coarse(self._gallery_rows(g0, g1), self.metric)
        return coarse_block(self._prepared_query(q0, q1, True), gallery, self.metric)

    def thresholds(self, distances: torch.Tensor) -> torch.Tensor:
        return coarse_thresholds(distances, self.metric)

    def pairs(self, q0: int, q1: int, rows: torch.Tensor, g_index: torch.Tensor) -> torch.Tensor:
        """Exact distances of query ``q0 + rows[i]`` to gallery item ``g_index[i]`` (queries of chunk q0:q1)."""
        q_rows, q_sq = self._prepared_query(q0, q1, False)
        rows = rows.to(q_rows.device)
        query = (q_rows[rows], None if q_sq is None else q_sq[rows])
        gallery = prepare(self._rows_at(g_index), self.metric, torch.float64)
        return pair_distance(query, gallery, self.metric, self.out_dtype)

    def _rows_at(self, g_index: torch.Tensor) -> torch.Tensor:
        """Gallery rows at ``g_index``: from the last coarse block's rows when they all lie there."""
        if self._gallery is not None and len(g_index):
            g0, g1, rows = self._gallery
            if int(g_index.min()) >= g0 and int(g_index.max()) < g1:
                return rows[(g_index - g0).to(rows.device)]
        return take_rows(self.gf, g_index.cpu().numpy(), self.device)


def _match_lists(q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray, g_camids: np.ndarray):
    """Per query, the gallery indices of its true matches (same id, other camera, not junk), ascending, padded
    with -1 to the longest list: ``(indices [Q, P], counts [Q])``."""
    order = np.argsort(g_pids, kind="stable")
    sorted_pids = g_pids[order]
    lo = np.searchsorted(sorted_pids, q_pids, side="left")
    hi = np.searchsorted(sorted_pids, q_pids, side="right")
    lists = []
    for q in range(len(q_pids)):
        if q_pids[q] == JUNK_PID:
            lists.append(order[:0])
            continue
        same_id = order[lo[q]:hi[q]]
        lists.append(np.sort(same_id[g_camids[same_id] != q_camids[q]]))
    counts = np.array([len(m) for m in lists], dtype=np.int64)
    indices = np.full((len(q_pids), max(1, int(counts.max(initial=0)))), -1, dtype=np.int64)
    for q, matches in enumerate(lists):
        indices[q, :len(matches)] = matches
    return indices, counts


def _ids(name: str, values: Any, expected: int) -> np.ndarray:
    values = as_numpy(values)
    if values.ndim != 1 or len(values) != expected:
        raise ValueError(f"{name} must be 1-D with {expected} entries, got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {values.dtype}")
    return values.astype(np.int64)


PAIRS_PER_CALL = 8192  # exact pairs per call: 8192 x 768 float64 rows is 50 MB


def _exact_pairs(source: DistanceBlocks, q0: int, q1: int, rows: torch.Tensor, g_index: torch.Tensor) -> torch.Tensor:
    return torch.cat([source.pairs(q0, q1, rows[i:i + PAIRS_PER_CALL], g_index[i:i + PAIRS_PER_CALL])
                      for i in range(0, max(len(rows), 1), PAIRS_PER_CALL)])


def _match_distances(source: DistanceBlocks, q0: int, q1: int, match_idx: torch.Tensor, blocks, gallery_block: int):
    """The exact distances [n, P] of the chunk's matches (inf in padding), and for a source without ``pairs``
    the (rows, slots, columns) of the matches in each block read, to check a second reading agrees."""
    n, width = match_idx.shape
    valid = match_idx >= 0
    seen = {}
    if hasattr(source, "pairs"):
        rows, slots = valid.nonzero(as_tuple=True)
        values = _exact_pairs(source, q0, q1, rows, match_idx[rows, slots])
        match_dist = torch.full((n, width), math.inf, dtype=values.dtype, device=values.device)
        match_dist[rows.to(values.device), slots.to(values.device)] = values
        return match_dist, seen
    match_dist = None
    for b in np.unique(match_idx[valid].numpy() // gallery_block).tolist():
        g0, g1 = blocks[b]
        dist = source.block(q0, q1, g0, g1)
        if match_dist is None:  # the chunk has a match, so this runs at least once
            match_dist = torch.full((n, width), math.inf, dtype=dist.dtype, device=dist.device)
        index, inside_valid = match_idx.to(dist.device), valid.to(dist.device)
        rows, slots = (inside_valid & (index >= g0) & (index < g1)).nonzero(as_tuple=True)
        seen[g0] = (rows, slots, index[rows, slots] - g0)
        match_dist[rows, slots] = dist[rows, seen[g0][2]]
    return match_dist, seen


def _rank_chunk(source: DistanceBlocks, q0: int, q1: int, match_idx: torch.Tensor,
                q_pids: torch.Tensor, g_pids: torch.Tensor, gallery_block: int, use_cpp: bool, bar) -> torch.Tensor:
    """The 0-based rank of every true match of queries ``q0:q1`` among their kept gallery items, [n, P] (padding
    entries are garbage), matches in their ranked order."""
    n, width = match_idx.shape
    num_gallery = source.num_gallery
    blocks = [(g0, min(g0 + gallery_block, num_gallery)) for g0 in range(0, num_gallery, gallery_block)]
    first_pass, seen = _match_distances(source, q0, q1, match_idx, blocks, gallery_block)
    device = first_pass.device
    match_dist, order = torch.sort(first_pass, dim=1, stable=True)  # indices ascend: ties stay by gallery index
    match_idx = torch.gather(match_idx.to(device), 1, order)
    coarse = hasattr(source, "coarse")
    thresholds = source.thresholds(match_dist).contiguous() if coarse else match_dist
    g_pids_np = g_pids.numpy()
    q_pids, g_pids = q_pids.to(device), g_pids.to(device)
    # Pass 2: wrong items per gap between consecutive matches, and ties with a match settled by gallery index.
    histogram = torch.zeros((n, width + 2), dtype=torch.int64, device=device)
    tied_before = torch.zeros((n, width), dtype=torch.int64, device=device)
    counts = (match_idx >= 0).sum(1)
    for g0, g1 in blocks:
        if coarse:
            dist, margin = source.coarse(q0, q1, g0, g1)
        else:
            dist = source.block(q0, q1, g0, g1)
            margin = torch.zeros(n, dtype=dist.dtype, device=dist.device)
        dist = dist.contiguous()
        if use_cpp and dist.device.type == "cpu" and dist.dtype in (torch.float32, torch.float64):
            finite, unsure = _C.count_block(dist.numpy(), margin.contiguous().numpy(), g_pids_np[g0:g1],
                                            q_pids.numpy(), thresholds.numpy(), match_idx.numpy(), counts.numpy(),
                                            g0, histogram.numpy(), tied_before.numpy())
            unsure = torch.from_numpy(unsure)
        else:
            finite, unsure = _count_block(dist, margin, g_pids[g0:g1], q_pids, thresholds, match_idx, g0,
                                          histogram, tied_before)
        if not finite:
            raise ValueError(f"distances of queries {q0}:{q1} to gallery {g0}:{g1} hold NaN: the ranking is undefined")
        if len(unsure):
            rows, cols = unsure[:, 0].to(device), unsure[:, 1].to(device)
            exact = _exact_pairs(source, q0, q1, rows, cols + g0).to(device)
            _count_exact(exact, rows, cols, match_dist, match_idx, g0, histogram, tied_before)
        if g0 in seen:
            rows, slots, columns = seen[g0]
            if not torch.equal(dist[rows, columns], first_pass[rows, slots]):
                raise RuntimeError(f"distances of queries {q0}:{q1} to gallery {g0}:{g1} changed between two "
                                   "computations of the same block: the distance source must be deterministic")
        bar.update(n * (g1 - g0))
    before = histogram[:, :width].cumsum(1) + tied_before  # wrong items ranked before each match
    return before + torch.arange(width, device=device)[None, :]


def _count_block(dist, margin, block_pids, q_pids, match_dist, match_idx, g0, histogram,
                 tied_before) -> tuple[bool, torch.Tensor]:
    """The torch counting pass (any device; the reference of ``fba._C.count_block``): ``(finite, unsure)``."""
    none = torch.zeros((0, 2), dtype=torch.int64)
    if torch.isnan(dist).any():
        return False, none
    width = match_dist.shape[1]
    wrong = (block_pids[None, :] != q_pids[:, None]) & (block_pids != JUNK_PID)[None, :]
    low = torch.searchsorted(match_dist, (dist - margin[:, None]).contiguous())  # matches below the window
    upto = torch.searchsorted(match_dist, (dist + margin[:, None]).contiguous(), right=True)  # ... or in it
    settled = wrong & (low == upto)
    dump = torch.tensor(width + 1, device=dist.device)
    histogram.scatter_add_(1, torch.where(settled, low, dump), torch.ones_like(low))
    rows, cols = (wrong & ~settled).nonzero(as_tuple=True)
    if bool((margin > 0).any()):
        return True, torch.stack([rows, cols], 1).cpu()
    _count_ties(rows, cols, low[rows, cols], upto[rows, cols], match_idx, g0, histogram, tied_before)
    return True, none


def _count_exact(values, rows, cols, match_dist, match_idx, g0, histogram, tied_before) -> None:
    """Wrong items (query row, block column) at their exact distances ``values``, counted as the exact block."""
    ranked = match_dist[rows]
    low = torch.searchsorted(ranked, values[:, None].contiguous()).squeeze(1)
    upto = torch.searchsorted(ranked, values[:, None].contiguous(), right=True).squeeze(1)
    _count_ties(rows, cols, low, upto, match_idx, g0, histogram, tied_before)


def _count_ties(rows, cols, low, upto, match_idx, g0, histogram, tied_before) -> None:
    """Items after the matches ``0 .. upto - 1``, at exactly the distance of matches ``low .. upto - 1``: each
    of those is after the item when the item's gallery index is smaller."""
    histogram.index_put_((rows, upto), torch.ones_like(rows), accumulate=True)
    spans = upto - low
    for offset in range(int(spans.max()) if len(spans) else 0):
        slots = (low + offset).clamp_max_(match_idx.shape[1] - 1)
        keep = (offset < spans) & (match_idx[rows, slots] > cols + g0)
        tied_before.index_put_((rows[keep], slots[keep]), torch.ones_like(rows[keep]), accumulate=True)


def rank_blocks(
    source: DistanceBlocks, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any,
    gallery_block: int = DEFAULT_GALLERY_BLOCK, query_block: int = DEFAULT_QUERY_BLOCK, progress: bool = True,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query ``(ap, inp, first_rank)`` as :func:`fba.retrieval.metrics._rank_metrics_numpy`, streamed from ``source``.

    ``backend`` of the counting pass: "torch" (any device), "cpp" (``fba._C``, CPU blocks) or "auto".
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    use_cpp = backend == "cpp" or (backend == "auto" and _C is not None)
    if use_cpp and _C is None:
        raise RuntimeError("backend='cpp' needs the compiled extension fba._C with count_block (rebuild: pip install -e .)")
    if gallery_block < 1 or query_block < 1:
        raise ValueError(f"block sizes must be >= 1, got gallery {gallery_block} and query {query_block}")
    num_query, num_gallery = source.num_query, source.num_gallery
    q_pids, q_camids = _ids("q_pids", q_pids, num_query), _ids("q_camids", q_camids, num_query)
    g_pids, g_camids = _ids("g_pids", g_pids, num_gallery), _ids("g_camids", g_camids, num_gallery)
    match_idx, counts = _match_lists(q_pids, g_pids, q_camids, g_camids)
    ap = np.full(num_query, np.nan)
    inp = np.full(num_query, np.nan)
    first_rank = np.full(num_query, -1, dtype=np.int64)
    q_pids_t, g_pids_t = torch.from_numpy(q_pids), torch.from_numpy(g_pids)
    with tqdm(total=num_query * num_gallery, unit="pair", unit_scale=True, desc="ranking", disable=not progress,
              smoothing=0.1) as bar:
        for q0 in range(0, num_query, query_block):
            q1 = min(q0 + query_block, num_query)
            chunk_counts = counts[q0:q1]
            if not chunk_counts.any():
                bar.update((q1 - q0) * num_gallery)
                continue
            width = int(chunk_counts.max())
            idx = torch.from_numpy(match_idx[q0:q1, :width])
            ranks = _rank_chunk(source, q0, q1, idx, q_pids_t[q0:q1], g_pids_t, gallery_block, use_cpp,
                                bar).cpu().numpy()
            for offset, count in enumerate(chunk_counts):
                if count == 0:
                    continue
                r = ranks[offset, :count].astype(np.float64)
                q = q0 + offset
                ap[q] = float(np.mean(np.arange(1.0, count + 1.0) / (r + 1.0)))
                inp[q] = count / (r[-1] + 1.0)
                first_rank[q] = int(r[0])
    return ap, inp, first_rank


def evaluate_blocks(
    source: DistanceBlocks, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any, max_rank: int = 50,
    gallery_block: int = DEFAULT_GALLERY_BLOCK, query_block: int = DEFAULT_QUERY_BLOCK, progress: bool = True,
    backend: str = "auto",
) -> RetrievalMetrics:
    """mAP, CMC and mINP as :func:`fba.retrieval.metrics.evaluate`, from a :class:`DistanceBlocks` source."""
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    per_query = rank_blocks(source, q_pids, g_pids, q_camids, g_camids, gallery_block, query_block, progress,
                            backend)
    return _summarise(*per_query, max_rank=max_rank, num_gallery=len(as_numpy(g_pids)))


def evaluate_streaming(
    qf: Any, gf: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any, metric: str = "cosine",
    max_rank: int = 50, gallery_block: int = DEFAULT_GALLERY_BLOCK, query_block: int = DEFAULT_QUERY_BLOCK,
    progress: bool = True, backend: str = "auto",
) -> RetrievalMetrics:
    """mAP, CMC and mINP straight from query and gallery features, ``gallery_block`` gallery rows at a time."""
    source = FeatureDistances(qf, gf, metric=metric)
    return evaluate_blocks(source, q_pids, g_pids, q_camids, g_camids, max_rank, gallery_block, query_block, progress,
                           backend)


class MatrixDistances:
    """Blocks of a distance matrix already in memory: the in-memory path's distances, streamed (tests, checks)."""

    def __init__(self, distmat: Any):
        self.distmat = torch.from_numpy(np.ascontiguousarray(as_numpy(distmat))) if not torch.is_tensor(distmat) else distmat
        self.num_query, self.num_gallery = self.distmat.shape

    def block(self, q0: int, q1: int, g0: int, g1: int) -> torch.Tensor:
        return self.distmat[q0:q1, g0:g1]

