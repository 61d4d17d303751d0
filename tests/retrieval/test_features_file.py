"""Tests of features files (both formats, atomic write, malformed files) and `fba eval --features` end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fba.cli import main
from fba.retrieval.command import format_metrics
from fba.retrieval.features_file import FeaturesFileError, FeatureSet, load_features, save_features
from fba.retrieval.metrics import evaluate, pairwise_distance
from fba.retrieval import score_features as evaluate_features

FORMATS = [".safetensors", ".npz"]


def _random_set(num=11, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        features=rng.normal(size=(num, dim)).astype(np.float32),
        paths=[f"query/{i:04d}_c1s1_0001_00.jpg" for i in range(num)],
        pids=rng.integers(-1, 4, num),
        camids=rng.integers(0, 3, num),
        split=["query" if i < 4 else "gallery" for i in range(num)],
        meta={"feature": "full", "dataset": "synthetic"},
    )


@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip(tmp_path, suffix):
    data = _random_set()
    path = save_features(tmp_path / f"feats{suffix}", **data)
    loaded = load_features(path)
    assert isinstance(loaded, FeatureSet) and len(loaded) == 11
    np.testing.assert_array_equal(loaded.features, data["features"])
    assert loaded.features.dtype == np.float32
    np.testing.assert_array_equal(loaded.pids, data["pids"])
    np.testing.assert_array_equal(loaded.camids, data["camids"])
    assert loaded.paths == data["paths"] and loaded.split == data["split"] and loaded.meta == data["meta"]
    assert [p.name for p in tmp_path.iterdir()] == [f"feats{suffix}"]  # no temporary file left behind


@pytest.mark.parametrize("suffix", FORMATS)
def test_optional_columns_and_tensors(tmp_path, suffix):
    features = torch.randn(3, 4, dtype=torch.float64)
    loaded = load_features(save_features(tmp_path / f"f{suffix}", features, ["a.jpg", "b.jpg", "c.jpg"]))
    assert loaded.pids is None and loaded.camids is None and loaded.split is None and loaded.meta == {}
    np.testing.assert_allclose(loaded.features, features.numpy().astype(np.float32))


def test_select_split():
    fs = FeatureSet(**_random_set())
    gallery = fs.select("gallery")
    assert len(gallery) == 7 and gallery.paths == fs.paths[4:]
    np.testing.assert_array_equal(gallery.pids, fs.pids[4:])


def test_save_rejects_inconsistent_columns(tmp_path):
    data = _random_set()
    data["pids"] = data["pids"][:-1]
    with pytest.raises(FeaturesFileError, match=r"pids has 10 entries but there are 11 feature rows"):
        save_features(tmp_path / "x.npz", **data)
    with pytest.raises(ValueError, match="features files end in"):
        save_features(tmp_path / "x.pt", np.zeros((1, 2)), ["a"])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("suffix", FORMATS)
def test_malformed_file_names_the_file(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"this is not a features file")
    with pytest.raises(FeaturesFileError, match=rf"broken\{suffix}: not a valid features file"):
        load_features(path)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_features(tmp_path / f"missing{suffix}")


def test_npz_without_features_or_with_bad_lengths(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, paths=np.array(["a"]))
    with pytest.raises(FeaturesFileError, match=r"partial.npz: no 'features' array"):
        load_features(path)
    np.savez(path, features=np.zeros((2, 3), np.float32), paths=np.array(["a"]), version=np.array(1))
    with pytest.raises(FeaturesFileError, match=r"partial.npz: paths has 1 entries but there are 2"):
        load_features(path)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_a_file_of_another_format_version_is_refused_by_name(tmp_path, suffix, monkeypatch):
    import fba.retrieval.features_file as features_file

    monkeypatch.setattr(features_file, "FORMAT_VERSION", 2)
    path = save_features(tmp_path / f"future{suffix}", np.ones((1, 2)), ["a.jpg"])
    monkeypatch.setattr(features_file, "FORMAT_VERSION", 1)
    with pytest.raises(FeaturesFileError, match=rf"future{suffix}: features format version 2, this fba reads 1"):
        load_features(path)


def test_safetensors_without_metadata(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"features": np.zeros((2, 3), np.float32)}, str(path))
    with pytest.raises(FeaturesFileError, match="plain.safetensors: safetensors file without"):
        load_features(path)


def _retrieval_set(seed=0, num_ids=6, per_id=4, dim=16):
    """Query/gallery rows where images of one id lie near a shared centre, so retrieval mostly works."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    pids = np.repeat(np.arange(1, num_ids + 1), per_id)
    camids = np.tile(np.arange(per_id), num_ids)
    features = (centres[pids - 1] + 0.6 * rng.normal(size=(len(pids), dim))).astype(np.float32)
    split = ["query" if c == 0 else "gallery" for c in camids]
    return features, pids, camids, split


def test_evaluate_features_and_table():
    features, pids, camids, split = _retrieval_set()
    q, g = np.array(split) == "query", np.array(split) == "gallery"
    metrics = evaluate_features(features[q], features[g], pids[q], pids[g], camids[q], camids[g], metric="euclidean")
    direct = evaluate(pairwise_distance(features[q], features[g]), pids[q], pids[g], camids[q], camids[g])
    assert metrics.mAP == pytest.approx(direct.mAP) and metrics.num_query == 6
    table = format_metrics(metrics.replace(feature="image"))
    for label in ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP", "valid queries", "6 / 6", "euclidean", "image"):
        assert label in table
    assert f"{100 * metrics.mAP:.2f}" in table


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("rerank", [False, True])
def test_fba_eval_features_end_to_end(tmp_path, capsys, suffix, rerank):
    features, pids, camids, split = _retrieval_set(num_ids=8, per_id=4)
    path = save_features(tmp_path / f"feats{suffix}", features, [f"{i}.jpg" for i in range(len(pids))],
                         pids=pids, camids=camids, split=split, meta={"feature": "full"})
    out = tmp_path / "metrics.json"
    argv = ["eval", "--features", str(path), "--metric", "cosine", "--json", str(out)]
    assert main(argv + (["--rerank"] if rerank else [])) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["num_valid_queries"] == 8 and saved["feature"] == "full" and saved["rerank"] is rerank
    assert len(saved["cmc"]) == 50 and 0.0 < saved["mAP"] <= 1.0
    assert f"{100 * saved['mAP']:.2f}" in printed and "Rank-1" in printed and "full" in printed
    q, g = np.array(split) == "query", np.array(split) == "gallery"
    expected = evaluate_features(features[q], features[g], pids[q], pids[g], camids[q], camids[g],
                                 metric="cosine", rerank=rerank)
    assert saved["mAP"] == pytest.approx(expected.mAP, abs=1e-12)


def test_fba_eval_features_errors(tmp_path, cli_error):
    cli_error(["eval"], "say what to evaluate")
    path = save_features(tmp_path / "nosplit.npz", np.ones((3, 2)), ["a", "b", "c"], pids=[1, 2, 3], camids=[0, 0, 1])
    cli_error(["eval", "--features", path], "nosplit.npz: cannot evaluate, the file has no split")
    path = save_features(tmp_path / "onlyq.npz", np.ones((2, 2)), ["a", "b"], pids=[1, 2], camids=[0, 1],
                         split=["query", "query"])
    cli_error(["eval", "--features", path], r"onlyq.npz: needs rows with split 'query' and 'gallery'")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01")
    cli_error(["eval", "--features", bad], "bad.safetensors: not a valid features file")
    cli_error(["eval", "--features", tmp_path / "missing.npz"], "missing.npz: features file not found")
