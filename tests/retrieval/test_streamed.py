"""Streaming evaluation (fba.retrieval.streamed) against the in-memory fba.retrieval.metrics.evaluate: random cases with
ties, junk, distractors and queries without matches, every block shape, both counting backends, features
from arrays, memory maps, tensors and on-demand sources."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fba.retrieval.metrics import evaluate, pairwise_distance
from fba.retrieval.streamed import (
    FeatureDistances, MatrixDistances, _compiled, evaluate_blocks, evaluate_streaming, rank_blocks,
)

BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(_compiled() is None, reason="fba._C not built"))]


def _ids(rng, num_query, num_gallery, num_ids=12, num_cams=3):
    """Ids with junk (-1) and distractors (0) in the gallery, a junk query and queries of ids absent there."""
    q_pids = rng.integers(1, num_ids + 3, num_query)
    q_pids[0] = -1
    g_pids = rng.integers(-1, num_ids + 1, num_gallery)
    return q_pids, g_pids, rng.integers(0, num_cams, num_query), rng.integers(0, num_cams, num_gallery)


def _same(got: dict, expected: dict, tol: float = 1e-12) -> None:
    assert got["num_valid_queries"] == expected["num_valid_queries"] > 0
    assert abs(got["mAP"] - expected["mAP"]) <= tol and abs(got["mINP"] - expected["mINP"]) <= tol
    np.testing.assert_allclose(got["cmc"], expected["cmc"], atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rounded", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocks_match_in_memory_ranking(backend, seed, rounded, dtype):
    rng = np.random.default_rng(seed)
    distmat = rng.random((41, 223)).astype(dtype)
    if rounded:
        distmat = np.round(distmat, 1)  # many exact ties between matches and wrong items
    ids = _ids(rng, 41, 223)
    expected = evaluate(distmat, *ids, max_rank=30, backend="numpy")
    for gallery_block, query_block in [(7, 5), (64, 16), (1000, 1000)]:
        got = evaluate_blocks(MatrixDistances(distmat), *ids, max_rank=30, gallery_block=gallery_block,
                              query_block=query_block, progress=False, backend=backend)
        _same(got, expected)


def test_one_by_one_blocks():
    rng = np.random.default_rng(9)
    distmat = np.round(rng.random((6, 30)), 1).astype(np.float32)
    ids = _ids(rng, 6, 30, num_ids=4)
    expected = evaluate(distmat, *ids, max_rank=10, backend="numpy")
    _same(evaluate_blocks(MatrixDistances(distmat), *ids, max_rank=10, gallery_block=1, query_block=1,
                          progress=False), expected)


def test_counting_backends_agree_per_query():
    if _compiled() is None:
        pytest.skip("fba._C not built")
    rng = np.random.default_rng(5)
    distmat = np.round(rng.random((30, 500)), 2).astype(np.float32)
    ids = _ids(rng, 30, 500, num_ids=4)  # long match lists: the binary-search branch of the C++ count too
    for a, b in zip(rank_blocks(MatrixDistances(distmat), *ids, 37, 11, False, "torch"),
                    rank_blocks(MatrixDistances(distmat), *ids, 37, 11, False, "cpp")):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_features_match_in_memory_path(metric):
    rng = np.random.default_rng(1)
    qf = rng.normal(size=(45, 24)).astype(np.float32)
    gf = rng.normal(size=(310, 24)).astype(np.float32)
    gf[100:110] = gf[:10]  # duplicated gallery rows: exact distance ties across blocks
    ids = _ids(rng, 45, 310)
    expected = evaluate(pairwise_distance(qf, gf, metric=metric), *ids)
    _same(evaluate_streaming(qf, gf, *ids, metric=metric, gallery_block=64, query_block=16, progress=False), expected)
    _same(evaluate_streaming(torch.from_numpy(qf), torch.from_numpy(gf), *ids, metric=metric, gallery_block=50,
                             progress=False), expected)


def _exact_keys(qf: np.ndarray, gf: np.ndarray, metric: str) -> np.ndarray:
    """Integer features ranked in exact rational arithmetic: each pair's dense rank among all distances (equal
    distances, equal rank), so a stable sort of it is the exact-tie rule: distance, then gallery index."""
    from fractions import Fraction

    q, g = qf.astype(np.int64), gf.astype(np.int64)
    dot = q @ g.T
    if metric == "euclidean":
        keys = [[int(v) for v in row] for row in (q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2 * dot]
    else:  # 1 - cos orders as -cos|cos| = -dot|dot| / (|q|^2 |g|^2), a rational
        norms = (q * q).sum(1)[:, None] * (g * g).sum(1)[None, :]
        keys = [[Fraction(-int(d) * abs(int(d)), int(n)) for d, n in zip(*row)] for row in zip(dot, norms)]
    order = {key: rank for rank, key in enumerate(sorted({k for row in keys for k in row}))}
    return np.array([[order[k] for k in row] for row in keys], dtype=np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_ties_are_ordered_by_gallery_index_at_every_block_size(backend, metric):
    """Integer features, duplicates and parallel rows: distances equal in exact arithmetic are equal in both
    paths, whatever the block, and tied items keep the gallery order."""
    rng = np.random.default_rng(7)
    qf = rng.integers(-2, 3, (64, 3)).astype(np.float32)
    gf = rng.integers(-2, 3, (1000, 3)).astype(np.float32)
    qf[~qf.any(1)] = 1.0
    gf[~gf.any(1)] = 1.0
    gf[:64] = qf  # each query's duplicate
    gf[64:128] = 2 * qf if metric == "cosine" else qf  # parallel rows (a duplicate again for euclidean)
    gf[128:200] = 3 * gf[200:272]  # parallel gallery rows
    ids = _ids(rng, 64, 1000, num_ids=6)
    exact = evaluate(_exact_keys(qf, gf, metric), *ids, backend="numpy")
    assert evaluate(pairwise_distance(qf, gf, metric=metric), *ids, backend="numpy").mAP == exact.mAP
    for gallery_block, query_block in [(1000, 64), (64, 16), (37, 64), (7, 5)]:
        got = evaluate_streaming(qf, gf, *ids, metric=metric, gallery_block=gallery_block, query_block=query_block,
                                 progress=False, backend=backend)
        _same(got, exact)  # a rank off by one moves mAP by >= 1e-5; AP sums differ in order only


def test_memmap_and_on_demand_sources(tmp_path):
    rng = np.random.default_rng(2)
    qf = rng.normal(size=(20, 16)).astype(np.float32)
    gf = rng.normal(size=(257, 16)).astype(np.float32)
    ids = _ids(rng, 20, 257)
    path = tmp_path / "gallery.f32"
    gf.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=gf.shape)

    class Rows:  # a generator-like source: rows made on demand, slices only
        shape = gf.shape

        def __getitem__(self, rows: slice) -> np.ndarray:
            return gf[rows]

    expected = evaluate(pairwise_distance(qf, gf, metric="cosine"), *ids)
    for source in (mapped, Rows()):
        _same(evaluate_streaming(qf, source, *ids, gallery_block=32, progress=False), expected)
    np.testing.assert_array_equal(np.asarray(mapped), gf)  # pages handed back are read again intact


def test_block_source_must_be_deterministic():
    class Flaky(MatrixDistances):
        calls = 0

        def block(self, q0, q1, g0, g1):
            Flaky.calls += 1
            return super().block(q0, q1, g0, g1) + Flaky.calls * 1e-3

    rng = np.random.default_rng(3)
    distmat = rng.random((5, 40)).astype(np.float32)
    with pytest.raises(RuntimeError, match="deterministic"):
        evaluate_blocks(Flaky(distmat), np.array([1] * 5), np.array([1, 2] * 20), np.zeros(5, int),
                        np.ones(40, int), progress=False)


def test_errors():
    distmat = np.array([[0.1, np.nan, 0.3]], dtype=np.float32)
    ids = (np.array([1]), np.array([1, 2, 1]), np.array([0]), np.array([1, 1, 2]))
    for backend in ("torch", "auto"):
        with pytest.raises(ValueError, match="NaN"):
            evaluate_blocks(MatrixDistances(distmat), *ids, progress=False, backend=backend)
    with pytest.raises(ValueError, match="none of the 1 queries"):
        evaluate_blocks(MatrixDistances(distmat[:, :2] * 0), np.array([1]), np.array([-1, 2]), np.array([0]),
                        np.array([1, 1]), progress=False)
    with pytest.raises(ValueError, match="same D"):
        FeatureDistances(np.zeros((2, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="g_pids"):
        evaluate_blocks(MatrixDistances(distmat), ids[0], ids[1][:2], ids[2], ids[3], progress=False)


def _rss_file_kb() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise OSError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_memmap_pages_leave_the_resident_set(tmp_path):
    from fba.retrieval.rows import read_rows

    rows = np.random.default_rng(4).normal(size=(8192, 1024)).astype(np.float32)  # 32 MB
    path = tmp_path / "big.f32"
    rows.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=rows.shape)
    float(read_rows(mapped, 0, 256).sum())  # the libraries' own pages, faulted in by a first call
    before = _rss_file_kb()
    total = 0.0
    for start in range(0, len(rows), 256):
        total += float(read_rows(mapped, start, start + 256).sum())
    assert total == pytest.approx(float(rows.sum(dtype=np.float64)), rel=1e-4)
    assert _rss_file_kb() - before < 8 * 1024  # a plain memmap read would keep all 32 MB resident
