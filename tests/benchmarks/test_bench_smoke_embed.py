"""Smoke test of benchmarks/bench_embed.py: the tiny model on the CPU prints its table and writes its JSON."""
from __future__ import annotations

import importlib.util
import json

import pytest

from benchmarks import bench_embed
from benchmarks.common import device_slug


def test_bench_embed_smoke_writes_table_and_json(tmp_path, capsys):
    argv = ["--smoke", "--device", "cpu", "--variants", "eager-bf16", "--results-dir", str(tmp_path)]
    assert bench_embed.main(argv) == 0
    printed = capsys.readouterr().out
    assert "p99_ms" in printed and "captions-cached" in printed
    entry = json.loads((tmp_path / f"{device_slug('cpu')}.json").read_text())["embed-smoke"]
    assert entry["commit"] and entry["config"]["shape"]["batches"] == [1, 4, 8]
    rows = entry["rows"]
    assert {(r["input"], r["batch"]) for r in rows} == {(i, b) for i in bench_embed.INPUTS for b in (1, 4, 8)}
    for row in rows:
        assert row["status"] == "ok" and 0 < row["p50_ms"] <= row["p99_ms"] and row["img_per_s"] > 0


def test_bench_embed_deploy_smoke_puts_onnxruntime_and_openvino_beside_pytorch(tmp_path, capsys):
    backends = ["pytorch", "onnxruntime", "onnxruntime-int8"]
    backends += ["openvino"] if importlib.util.find_spec("openvino") else []
    argv = ["--deploy", "--smoke", "--device", "cpu", "--backends", *backends, "--results-dir", str(tmp_path)]
    assert bench_embed.main(argv) == 0
    assert "vs_pytorch" in capsys.readouterr().out
    entry = json.loads((tmp_path / f"{device_slug('cpu')}.json").read_text())["embed-deploy-smoke"]
    rows = {(r["backend"], r["batch"]): r for r in entry["rows"]}
    assert set(rows) == {(b, n) for b in backends for n in (1, 32)}
    assert all(r["status"] == "ok" and r["img_per_s"] > 0 for r in rows.values())
    assert rows["pytorch", 32]["vs_pytorch"] == 1.0 and rows["onnxruntime", 32]["vs_pytorch"] > 0
    for row in rows.values():  # the rate against the fp32 matmul peak of the same run
        assert row["gflops"] > 0 and row["peak_fp32_gflops"] > 0
        assert row["of_peak"] == pytest.approx(row["gflops"] / row["peak_fp32_gflops"])


def test_bench_embed_deploy_smoke_prices_the_captions(tmp_path):
    argv = ["--deploy", "--smoke", "--device", "cpu", "--backends", "pytorch", "onnxruntime",
            "--inputs", "image", "captions-cached", "--results-dir", str(tmp_path)]
    assert bench_embed.main(argv) == 0
    rows = json.loads((tmp_path / f"{device_slug('cpu')}.json").read_text())["embed-deploy-captions-smoke"]["rows"]
    cases = {(r["backend"], r["input"], r["batch"]): r for r in rows}
    assert set(cases) == {(b, i, n) for b in ("pytorch", "onnxruntime") for i in ("image", "captions-cached")
                          for n in (1, 32)}
    for (backend, input, batch), row in cases.items():
        assert row["status"] == "ok"
        if input == "image":
            assert "captions_cost" not in row
        else:  # the full feature does more work than the image alone: the captions cost time
            image = cases[backend, "image", batch]
            assert row["captions_cost"] == pytest.approx(image["img_per_s"] / row["img_per_s"] - 1)
            assert row["gflops"] / row["img_per_s"] > image["gflops"] / image["img_per_s"]  # FLOP per image
