"""Smoke test of benchmarks/bench_metrics.py: tiny sizes, table printed, JSON written and merged per device."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import bench_metrics
from benchmarks.common import device_slug, format_table, write_results


def test_bench_metrics_smoke_writes_table_and_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FBA_BENCH_RESULTS", str(tmp_path / "ignored"))
    write_results("other_benchmark", [{"x": 1}], directory=tmp_path)
    assert bench_metrics.main(["--smoke", "--repeat", "1", "--results-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "problem" in printed and "speedup_vs_numpy" in printed and "smoke" in printed
    path = tmp_path / f"{device_slug('cpu')}.json"
    data = json.loads(path.read_text())
    assert data["other_benchmark"]["rows"] == [{"x": 1}]  # the other benchmark's key survives the merge
    entry = data["metrics-smoke"]
    assert entry["device"] and entry["commit"] and entry["config"]["problems"]["smoke"]["num_query"] == 60
    backends = {row["backend"] for row in entry["rows"]}
    assert "numpy" in backends
    maps = {row["mAP"] for row in entry["rows"]}
    assert len(maps) == 1 and 0.0 < maps.pop() <= 1.0
    assert all(row["best_s"] > 0 for row in entry["rows"])
    assert not (tmp_path / "ignored").exists()
    scale = {(row["case"], row["problem"]): row for row in data["metrics-scale-smoke"]["rows"]}
    assert "eval-stream" in printed and "peak_rss_mb" in printed
    for memory, streamed in (("eval-memory", "eval-stream"), ("rerank-memory", "rerank-bounded")):
        assert scale[(streamed, "smoke")]["mAP"] == pytest.approx(scale[(memory, "smoke")]["mAP"], abs=1e-9)
        assert scale[(streamed, "smoke")]["mINP"] == pytest.approx(scale[(memory, "smoke")]["mINP"], abs=1e-9)
    assert scale[("rerank-check", "smoke")]["max_abs_diff"] <= 1e-5
    assert scale[("eval-stream", "smoke-distractors")]["gallery"] == 1000
    assert all(row["peak_rss_mb"] > 0 and row["seconds"] > 0 for row in scale.values())
    assert scale[("eval-stream", "smoke")]["streamed"] and not scale[("eval-memory", "smoke")]["streamed"]


def test_seeded_rows_are_the_same_whatever_the_slices():
    from benchmarks.retrieval_scale import FEATURE_PROBLEMS, make_features

    qf, rows, ids = make_features(FEATURE_PROBLEMS["smoke-distractors"], materialise=False)
    whole = rows[0:rows.shape[0]]
    assert whole.shape == (1000, 32) and qf.shape == (40, 32) and len(ids[1]) == 1000
    np.testing.assert_array_equal(np.concatenate([rows[0:5], rows[5:777], rows[777:1000]]), whole)
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, rtol=1e-5)


def test_results_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FBA_BENCH_RESULTS", str(tmp_path))
    path = write_results("demo", [{"a": 1.5}])
    assert path.parent == tmp_path and json.loads(path.read_text())["demo"]["rows"] == [{"a": 1.5}]


def test_format_table_and_slug():
    table = format_table([{"name": "a", "seconds": 0.123456}, {"name": "long-name", "seconds": 2.0}])
    lines = table.splitlines()
    assert lines[0].split() == ["name", "|", "seconds"] and "0.1235" in table and len(lines) == 4
    assert device_slug("cpu", "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz") == "cpu-intel-xeon-platinum-8480"
    assert device_slug("cuda", "NVIDIA H100 80GB HBM3") == "cuda-nvidia-h100-80gb-hbm3"


def test_earlier_rows_keeps_the_variants_not_measured_again(tmp_path):
    from benchmarks.common import earlier_rows

    assert earlier_rows("train_step", "cpu", str(tmp_path), ["a"]) == []
    rows = [{"variant": "a", "x": 1}, {"variant": "b", "x": 2}, {"variant": "c", "x": 3}]
    write_results("train_step", rows, kind="cpu", config={}, directory=tmp_path)
    assert earlier_rows("train_step", "cpu", str(tmp_path), ["a", "c"]) == [{"variant": "b", "x": 2}]
    assert earlier_rows("embed", "cpu", str(tmp_path), []) == []
