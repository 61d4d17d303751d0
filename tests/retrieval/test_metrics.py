"""Tests of fba.retrieval.metrics: hand-worked mAP/CMC/mINP, NumPy vs C++ ranking, distances, re-ranking vs the reference."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fba.retrieval.metrics import cpp_available, evaluate, pairwise_distance, re_rank

BACKENDS = [
    "numpy",
    pytest.param("cpp", marks=pytest.mark.skipif(not cpp_available(), reason="fba._C is not built")),
]

# Gallery of the hand-worked case: (pid, camid); -1 junk, 0 distractor.
GALLERY = [(2, 1), (1, 1), (1, 0), (-1, 1), (0, 1), (1, 2), (3, 1)]
QUERIES = [(1, 0), (3, 0), (4, 0)]
DISTMAT = np.array([
    [0.1, 0.2, 0.05, 0.0, 0.3, 0.4, 0.9],
    [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.05],
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
], dtype=np.float32)


def _ids(pairs):
    return np.array([p for p, _ in pairs]), np.array([c for _, c in pairs])


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_worked_case(backend):
    # Query 0 (id 1, cam 0): g2 is the same id and camera and g3 junk: both dropped. Kept order:
    #   g0 (wrong), g1 (match), g4 (distractor id 0: wrong), g5 (match), g6 (wrong)
    #   AP = (1/2 + 2/4) / 2 = 0.5; first match at rank index 1; INP = 2 / (3 + 1) = 0.5.
    # Query 1 (id 3, cam 0): g6 (id 3, cam 1) is nearest: AP 1, rank index 0, INP 1/1.
    # Query 2 (id 4): no gallery image of id 4: skipped, not counted.
    q_pids, q_camids = _ids(QUERIES)
    g_pids, g_camids = _ids(GALLERY)
    result = evaluate(DISTMAT, q_pids, g_pids, q_camids, g_camids, max_rank=5, backend=backend)
    assert result.num_valid_queries == 2
    assert result.mAP == pytest.approx(0.75, abs=1e-12)
    assert result.mINP == pytest.approx(0.75, abs=1e-12)
    np.testing.assert_allclose(result.cmc, [0.5, 1.0, 1.0, 1.0, 1.0], atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ties_keep_gallery_order(backend, dtype):
    # All four at distance 0.5: the stable order is the gallery order g0 (wrong), g1, g2 (matches), g3 (wrong).
    #   AP = (1/2 + 2/3) / 2 = 7/12; INP = 2 / 3; first match at rank index 1.
    distmat = np.full((1, 4), 0.5, dtype=dtype)
    g_pids, g_camids = np.array([2, 1, 1, 5]), np.array([1, 1, 2, 1])
    result = evaluate(distmat, np.array([1]), g_pids, np.array([0]), g_camids, max_rank=3, backend=backend)
    assert result.mAP == pytest.approx(7 / 12, abs=1e-12)
    assert result.mINP == pytest.approx(2 / 3, abs=1e-12)
    np.testing.assert_allclose(result.cmc, [0.0, 1.0, 1.0])
    # The same images with the matches listed first: the ties now rank them first, AP 1 and INP 2 / 2.
    first = evaluate(distmat, np.array([1]), np.array([1, 1, 2, 5]), np.array([0]), np.array([1, 2, 1, 1]),
                     max_rank=3, backend=backend)
    assert first.mAP == pytest.approx(1.0, abs=1e-12) and first.mINP == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(first.cmc, [1.0, 1.0, 1.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_valid_query_is_an_error(backend):
    # The only images of the query's id are junk or from its own camera: nothing can be measured.
    distmat = np.array([[0.1, 0.2, 0.3]])
    with pytest.raises(ValueError, match="none of the 1 queries"):
        evaluate(distmat, np.array([1]), np.array([-1, -1, 1]), np.array([0]), np.array([1, 2, 0]), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_junk_query_is_skipped(backend):
    # A query of id -1 would match the junk gallery images; junk is dropped, so the query is skipped.
    distmat = np.array([[0.1, 0.2], [0.3, 0.1]])
    result = evaluate(distmat, np.array([-1, 7]), np.array([-1, 7]), np.array([0, 0]), np.array([1, 1]),
                      max_rank=2, backend=backend)
    assert result.num_valid_queries == 1 and result.mAP == 1.0


def _random_problem(seed, num_query=37, num_gallery=211, rounded=False, dtype=np.float32):
    rng = np.random.default_rng(seed)
    distmat = rng.random((num_query, num_gallery)).astype(dtype)
    if rounded:
        distmat = np.round(distmat, 1)
    q_pids = rng.integers(-1, 15, num_query)
    g_pids = rng.integers(-1, 15, num_gallery)
    return distmat, q_pids, g_pids, rng.integers(0, 3, num_query), rng.integers(0, 3, num_gallery)


@pytest.mark.skipif(not cpp_available(), reason="fba._C is not built")
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rounded", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpp_matches_numpy(seed, rounded, dtype):
    problem = _random_problem(seed, rounded=rounded, dtype=dtype)
    reference = evaluate(*problem, max_rank=20, backend="numpy")
    fast = evaluate(*problem, max_rank=20, backend="cpp")
    assert fast.num_valid_queries == reference.num_valid_queries > 0
    assert abs(fast.mAP - reference.mAP) < 1e-9
    assert abs(fast.mINP - reference.mINP) < 1e-9
    np.testing.assert_allclose(fast.cmc, reference.cmc, atol=1e-9)


def test_auto_backend_and_tensor_inputs():
    problem = _random_problem(7)
    reference = evaluate(*problem, backend="numpy")
    auto = evaluate(*(torch.from_numpy(np.asarray(a)) for a in problem))
    assert auto.mAP == pytest.approx(reference.mAP, abs=1e-9)
    assert auto.cmc.shape == (50,)


def test_input_validation():
    distmat, q_pids, g_pids, q_camids, g_camids = _random_problem(0, num_query=4, num_gallery=6)
    with pytest.raises(ValueError, match="g_pids must be 1-D with one entry per gallery row"):
        evaluate(distmat, q_pids, g_pids[:-1], q_camids, g_camids)
    with pytest.raises(ValueError, match="q_camids"):
        evaluate(distmat, q_pids, g_pids, q_camids[:2], g_camids)
    with pytest.raises(ValueError, match="2-D"):
        evaluate(distmat[0], q_pids, g_pids, q_camids, g_camids)
    with pytest.raises(ValueError, match="backend"):
        evaluate(distmat, q_pids, g_pids, q_camids, g_camids, backend="fast")
    distmat[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate(distmat, q_pids, g_pids, q_camids, g_camids)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_pairwise_distance_matches_direct_formula(metric):
    rng = np.random.default_rng(1)
    qf, gf = rng.normal(size=(5, 7)).astype(np.float32), rng.normal(size=(9, 7)).astype(np.float32)
    if metric == "euclidean":
        expected = np.sqrt(((qf[:, None, :].astype(np.float64) - gf[None]) ** 2).sum(-1))
    else:
        qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
        gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
        expected = 1.0 - qn.astype(np.float64) @ gn.T
    got = pairwise_distance(qf, gf, metric=metric, chunk_size=2)
    assert got.shape == (5, 9) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pairwise_distance(torch.from_numpy(qf), torch.from_numpy(gf), metric=metric), got)
    with pytest.raises(ValueError, match="same D"):
        pairwise_distance(qf, gf[:, :3], metric=metric)


def re_ranking_reference(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """The loop implementation of TransReID/torchreid ``re_ranking``, verbatim but for a stable argsort."""
    original_dist = np.concatenate(
        [np.concatenate([q_q_dist, q_g_dist], axis=1), np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0)
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)
    query_num = q_g_dist.shape[0]
    all_num = q_g_dist.shape[0] + q_g_dist.shape[1]
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, :k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, :k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            half = int(np.around(k1 / 2.0)) + 1
            candidate_forward = initial_rank[candidate, :half]
            candidate_backward = initial_rank[candidate_forward, :half]
            candidate_k_reciprocal_index = candidate_forward[np.where(candidate_backward == candidate)[0]]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > 2.0 / 3 * len(
                    candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index, candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = 1.0 * weight / np.sum(weight)
    original_dist = original_dist[:query_num]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    inv_index = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
    jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num], dtype=np.float32)
        ind_non_zero = np.where(V[i, :] != 0)[0]
        for j in ind_non_zero:
            temp_min[0, inv_index[j]] += np.minimum(V[i, j], V[inv_index[j], j])
        jaccard_dist[i] = 1 - temp_min / (2.0 - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


def _features(seed, num_query, num_gallery, dim=8, rounded=False):
    feats = np.random.default_rng(seed).normal(size=(num_query + num_gallery, dim)).astype(np.float32)
    if rounded:
        feats = np.round(feats)
    qf, gf = feats[:num_query], feats[num_query:]
    return pairwise_distance(qf, gf), pairwise_distance(qf, qf), pairwise_distance(gf, gf)


@pytest.mark.parametrize(
    "seed,num_query,num_gallery,k1,k2,rounded",
    [(0, 7, 40, 20, 6, False), (1, 10, 33, 5, 3, False), (2, 12, 50, 6, 1, False), (3, 5, 31, 4, 2, True)],
)
def test_re_rank_matches_reference(seed, num_query, num_gallery, k1, k2, rounded):
    q_g, q_q, g_g = _features(seed, num_query, num_gallery, rounded=rounded)
    got = re_rank(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=0.3)
    expected = re_ranking_reference(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=0.3)
    assert got.shape == (num_query, num_gallery) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert got.min() >= 0.0 and got.max() <= 1.0 + 1e-6


def test_re_rank_lambda_one_is_normalised_original():
    # With lambda 1 only the squared, row-normalised original distance of the joint matrix remains.
    q_g, q_q, g_g = _features(4, 6, 20)
    joint_rows = np.concatenate([q_q, q_g], axis=1) ** 2
    expected = q_g ** 2 / joint_rows.max(axis=1, keepdims=True)
    np.testing.assert_allclose(re_rank(q_g, q_q, g_g, lambda_value=1.0), expected, rtol=1e-6)


def test_re_rank_validation():
    q_g, q_q, g_g = _features(5, 4, 10)
    with pytest.raises(ValueError, match="g_g"):
        re_rank(q_g, q_q, g_g[:5])
    with pytest.raises(ValueError, match="k1"):
        re_rank(q_g, q_q, g_g, k1=0)


@pytest.mark.parametrize("num_query,num_gallery", [(2, 3), (1, 1), (3, 2)])
def test_re_rank_with_fewer_images_than_k2(num_query, num_gallery):
    # Q + G < k2 (and < k1 + 1): neighbour lists are the shorter lists, as the reference's slices are.
    q_g, q_q, g_g = _features(6, num_query, num_gallery)
    got = re_rank(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3)
    expected = re_ranking_reference(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3)
    assert got.shape == (num_query, num_gallery) and np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_topk_stable_matches_stable_argsort():
    from fba.retrieval.metrics import _topk_stable

    rng = np.random.default_rng(3)
    dist = np.round(rng.random((300, 57)), 1).astype(np.float32)  # many ties, rows span two chunks
    for k in (1, 7, 57, 80):
        np.testing.assert_array_equal(_topk_stable(dist, k), np.argsort(dist, axis=1, kind="stable")[:, :k])


def test_bf16_tensor_inputs():
    qf = torch.randn(4, 6, dtype=torch.bfloat16)
    gf = torch.randn(5, 6, dtype=torch.bfloat16)
    got = pairwise_distance(qf, gf, metric="cosine")
    np.testing.assert_allclose(got, pairwise_distance(qf.float().numpy(), gf.float().numpy(), metric="cosine"),
                               rtol=1e-6, atol=1e-6)
    result = evaluate(torch.from_numpy(got).bfloat16(), torch.arange(4), torch.arange(5), torch.zeros(4, dtype=torch.long),
                      torch.ones(5, dtype=torch.long), max_rank=5)
    assert result.num_valid_queries == 4


def test_percent_reports_the_ranks_the_cmc_has():
    from fba.retrieval.metrics import RetrievalMetrics

    metrics = RetrievalMetrics(mAP=0.5, cmc=np.array([0.6, 0.7, 0.8, 0.9, 0.95]), mINP=0.25, num_valid_queries=3,
                               num_query=4, num_gallery=9)
    assert metrics.percent() == pytest.approx({"mAP": 50.0, "R1": 60.0, "R5": 95.0, "mINP": 25.0})
    assert list(metrics.replace(cmc=np.linspace(0.1, 1.0, 10)).percent()) == ["mAP", "R1", "R5", "R10", "mINP"]
    saved = metrics.replace(metric="cosine").to_dict()
    assert saved["cmc"] == pytest.approx([0.6, 0.7, 0.8, 0.9, 0.95]) and "feature" not in saved
    assert json.loads(json.dumps(saved))["metric"] == "cosine"


def test_evaluate_counts_queries_and_gallery():
    distmat = np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.4]])
    result = evaluate(distmat, np.array([1, 2]), np.array([1, 2, 3]), np.array([0, 0]), np.array([1, 1, 1]))
    assert (result.num_query, result.num_gallery, result.num_valid_queries) == (2, 3, 2)
    assert result.feature is None and result.metric is None and result.rerank is False
