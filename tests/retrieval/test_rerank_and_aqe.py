"""Bounded k-reciprocal re-ranking against fba.retrieval.metrics.re_rank (and so against the loop reference of
tests/test_metrics.py), average query expansion against fast-reid's ``aqe``, and the scoring entry point's two
paths against each other."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fba.retrieval.metrics import evaluate, pairwise_distance, re_rank
from fba.retrieval import RerankedDistances, average_query_expansion, evaluate_blocks, score_features
from fba.retrieval.score import use_streaming


def _split(seed, num_query, num_gallery, dim=8, rounded=False, integers=False):
    rng = np.random.default_rng(seed)
    feats = rng.integers(0, 3, (num_query + num_gallery, 3)) if integers else rng.normal(size=(num_query + num_gallery, dim))
    feats = np.round(feats) if rounded else feats
    feats = feats.astype(np.float32)
    return feats[:num_query], feats[num_query:]


def _in_memory(qf, gf, metric, **options):
    return re_rank(pairwise_distance(qf, gf, metric), pairwise_distance(qf, qf, metric),
                   pairwise_distance(gf, gf, metric), **options)


@pytest.mark.parametrize(
    "seed,num_query,num_gallery,k1,k2,metric,block,kind",
    [
        (0, 7, 40, 20, 6, "euclidean", 16, "normal"),
        (1, 10, 33, 5, 3, "cosine", 8, "normal"),
        (2, 12, 50, 6, 1, "euclidean", 7, "normal"),
        (3, 5, 31, 4, 2, "euclidean", 5, "rounded"),
        (4, 30, 260, 20, 6, "cosine", 64, "normal"),
        (5, 3, 2, 20, 6, "euclidean", 2, "normal"),  # fewer images than k2 and k1 + 1
        (6, 9, 70, 6, 3, "euclidean", 16, "duplicates"),  # ties reach past the margin: rows recomputed
    ],
)
def test_bounded_re_rank_matches_in_memory(seed, num_query, num_gallery, k1, k2, metric, block, kind):
    qf, gf = _split(seed, num_query, num_gallery, rounded=kind == "rounded", integers=kind == "duplicates")
    expected = _in_memory(qf, gf, metric, k1=k1, k2=k2, lambda_value=0.3)
    bounded = RerankedDistances(qf, gf, metric=metric, k1=k1, k2=k2, lambda_value=0.3, block=block, progress=False)
    np.testing.assert_allclose(bounded.matrix(query_block=4), expected, rtol=0, atol=1e-5)
    if kind == "duplicates":
        assert bounded.recomputed_rows > 0
    tensors = RerankedDistances(torch.from_numpy(qf), torch.from_numpy(gf), metric=metric, k1=k1, k2=k2,
                                block=block + 3, progress=False)
    np.testing.assert_allclose(tensors.matrix(), expected, rtol=0, atol=1e-5)


def test_re_ranked_blocks_feed_the_streaming_evaluation():
    qf, gf = _split(7, 25, 180, dim=6)
    rng = np.random.default_rng(7)
    ids = (rng.integers(0, 9, 25), rng.integers(-1, 9, 180), rng.integers(0, 3, 25), rng.integers(0, 3, 180))
    expected = evaluate(_in_memory(qf, gf, "cosine"), *ids)
    got = evaluate_blocks(RerankedDistances(qf, gf, block=32, progress=False), *ids, gallery_block=40, query_block=8,
                          progress=False)
    assert got["num_valid_queries"] == expected["num_valid_queries"]
    assert got["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    np.testing.assert_allclose(got["cmc"], expected["cmc"], atol=1e-9)


def fastreid_aqe(query_feat, gallery_feat, qe_times=1, qe_k=10, alpha=3.0):
    """fast-reid's ``fastreid/evaluation/query_expansion.py: aqe``, verbatim."""
    num_query = query_feat.shape[0]
    all_feat = torch.cat((query_feat, gallery_feat), dim=0)
    norm_feat = F.normalize(all_feat, p=2, dim=1)
    all_feat = all_feat.numpy()
    for _ in range(qe_times):
        all_feat_list = []
        sims = torch.mm(norm_feat, norm_feat.t())
        sims = sims.data.cpu().numpy()
        for sim in sims:
            init_rank = np.argpartition(-sim, range(1, qe_k + 1))
            weights = sim[init_rank[:qe_k]].reshape((-1, 1))
            weights = np.power(weights, alpha)
            all_feat_list.append(np.mean(all_feat[init_rank[:qe_k], :] * weights, axis=0))
        all_feat = np.stack(all_feat_list, axis=0)
        norm_feat = F.normalize(torch.from_numpy(all_feat), p=2, dim=1)
    return all_feat[:num_query], all_feat[num_query:]


@pytest.mark.parametrize("k,alpha,block", [(5, 3.0, 32), (1, 1.0, 7), (10, 2.0, 200)])
def test_average_query_expansion_matches_fastreid(k, alpha, block):
    qf, gf = _split(8, 23, 101, dim=16)
    expected_q, expected_g = fastreid_aqe(torch.from_numpy(qf), torch.from_numpy(gf), qe_k=k, alpha=alpha)
    got_q, got_g = average_query_expansion(qf, gf, k=k, alpha=alpha, block=block, progress=False)
    assert got_q.shape == qf.shape and got_g.shape == gf.shape
    np.testing.assert_allclose(got_q, expected_q, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_g, expected_g, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="k >= 1"):
        average_query_expansion(qf, gf, k=0)


@pytest.mark.parametrize("rerank,aqe", [(False, 0), (False, 3), (True, 0), (True, 3)])
def test_score_features_paths_agree(rerank, aqe):
    qf, gf = _split(9, 30, 150, dim=12)
    rng = np.random.default_rng(9)
    ids = (rng.integers(0, 10, 30), rng.integers(-1, 10, 150), rng.integers(0, 3, 30), rng.integers(0, 3, 150))
    memory = score_features(qf, gf, *ids, rerank=rerank, aqe=aqe, streaming="off")
    streamed = score_features(qf, gf, *ids, rerank=rerank, aqe=aqe, streaming="on", block=32)
    assert not memory["streaming"] and streamed["streaming"]
    assert memory["aqe"] == streamed["aqe"] == aqe and memory["rerank"] == streamed["rerank"] == rerank
    assert streamed["mAP"] == pytest.approx(memory["mAP"], abs=1e-9)
    assert streamed["mINP"] == pytest.approx(memory["mINP"], abs=1e-9)
    np.testing.assert_allclose(streamed["cmc"], memory["cmc"], atol=1e-9)


def test_streaming_threshold():
    assert not use_streaming(3368, 15913, rerank=False)  # Market-1501 fits in memory
    assert use_streaming(3368, 515913, rerank=False)  # + 500k distractors does not
    assert use_streaming(3368, 15913, rerank=True)  # nor its (Q+G)^2 joint matrix
    assert use_streaming(10, 10, rerank=False, mode="on") and not use_streaming(10**6, 10**6, False, mode="off")
    with pytest.raises(ValueError, match="streaming"):
        use_streaming(1, 1, False, mode="maybe")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; the CPU twins above run instead")
def test_cuda_features_give_the_cpu_numbers():
    qf, gf = _split(10, 30, 200, dim=12)
    rng = np.random.default_rng(10)
    ids = (rng.integers(0, 10, 30), rng.integers(-1, 10, 200), rng.integers(0, 3, 30), rng.integers(0, 3, 200))
    for options in ({}, {"rerank": True}, {"aqe": 3}):
        cpu = score_features(qf, gf, *ids, streaming="on", block=64, **options)
        cuda = score_features(torch.from_numpy(qf).cuda(), torch.from_numpy(gf).cuda(), *ids, streaming="on",
                              block=64, **options)
        assert cuda["mAP"] == pytest.approx(cpu["mAP"], abs=1e-6)
        np.testing.assert_allclose(cuda["cmc"], cpu["cmc"], atol=1e-6)
